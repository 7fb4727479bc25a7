//! `docs/events.schema.json` against what rpz-guard writes: the schema is a
//! valid draft 2020-12 schema, its examples (one per reason) are exactly what
//! the event writer produces for the same event in both layouts, every
//! reason the code knows is in the schema, and the schema refuses broken
//! events (so the lab tests' validation of real events means something).
//! The examples block of `docs/events.md` is generated from the same source.
//! The same for the learned events of live learning (issue 9).

mod daemon_support;

use daemon_support::{check_event_line, event_schema_path, event_validator};
use guard_user::events::{DetectionEvent, EventFormat, EventSettings, LearnedEvent, Reason, SCHEMA_VERSION};
use serde_json::{Value, json};

fn schema() -> Value {
    serde_json::from_str(&std::fs::read_to_string(event_schema_path()).expect("read schema")).expect("JSON")
}

/// The native examples of the schema, with the settings each was written with.
fn examples() -> Vec<(Value, EventSettings)> {
    schema()["examples"]
        .as_array()
        .expect("schema has examples")
        .iter()
        .map(|v| {
            let count_only = v.get("count_only").is_some_and(|c| c == true);
            (v.clone(), EventSettings { format: EventFormat::Native, count_only })
        })
        .collect()
}

/// The learned-event examples of the schema (native layout).
fn learned_examples() -> Vec<Value> {
    schema()["$defs"]["learned"]["examples"].as_array().expect("learned examples").clone()
}

/// The ECS form of a learned event, `observer.version` normalised.
fn learned_ecs(ev: &LearnedEvent) -> Value {
    let mut v = ev.to_json(EventFormat::Ecs);
    v["observer"]["version"] = json!("0.1.0");
    v
}

/// The ECS form of an event; `observer.version` is the build's, so it is
/// normalised for comparison with the documentation.
fn ecs(ev: &DetectionEvent, settings: EventSettings) -> Value {
    let mut v = ev.to_json(EventSettings { format: EventFormat::Ecs, ..settings });
    v["observer"]["version"] = json!("0.1.0");
    v
}

#[test]
fn schema_is_a_valid_draft_2020_12_schema() {
    let s = schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    if let Err(e) = jsonschema::meta::validate(&s) {
        panic!("docs/events.schema.json is not a valid schema: {e}");
    }
    assert!(s["$id"].as_str().is_some_and(|id| id.ends_with(&format!("/v{SCHEMA_VERSION}.json"))));
    assert_eq!(s["$defs"]["native"]["properties"]["version"]["const"], SCHEMA_VERSION);
}

#[test]
fn every_reason_is_in_the_schema_and_has_an_example() {
    let s = schema();
    let listed: Vec<&str> = s["$defs"]["reason"]["enum"]
        .as_array()
        .expect("reason enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let known: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(listed, known, "the schema's reasons must be the code's (guard_user::events::Reason::ALL)");
    let with_example: Vec<String> =
        examples().iter().map(|(v, _)| v["reason"].as_str().expect("reason").to_owned()).collect();
    assert_eq!(with_example, known, "one example per reason, in order");
}

#[test]
fn examples_are_what_the_writer_produces_in_both_layouts() {
    for (example, settings) in examples() {
        check_event_line(&example.to_string());
        let ev: DetectionEvent = serde_json::from_value(example.clone()).expect("example reads as an event");
        assert_eq!(ev.to_json(settings), example, "native example differs from the writer's output");
        let e = ecs(&ev, settings);
        check_event_line(&e.to_string());
        // The ECS fields the issue names, one by one.
        assert_eq!(e["source"]["ip"], example["src"]);
        assert_eq!(e["destination"]["ip"], example["dst"]);
        assert_eq!(e["destination"]["port"], example["dport"]);
        assert_eq!(e["network"]["transport"], example["proto"]);
        assert_eq!(e["rule"]["name"], example["reason"]);
        let action = if settings.count_only { "would_block" } else { "blocked" };
        assert_eq!(e["event"]["action"], action);
    }
}

/// The examples block of docs/events.md, as the writer produces it.
fn docs_block() -> String {
    let mut out = String::from("<!-- examples:begin -->\n");
    for (example, settings) in examples() {
        let ev: DetectionEvent = serde_json::from_value(example.clone()).expect("event");
        let line = ev.to_line(settings);
        assert_eq!(serde_json::from_str::<Value>(&line).expect("line"), example);
        out.push_str(&format!("`{}`, native:\n\n```json\n{line}\n```\n\n", ev.reason.name()));
        let pretty = serde_json::to_string_pretty(&ecs(&ev, settings)).expect("json");
        out.push_str(&format!("ECS:\n\n```json\n{pretty}\n```\n\n"));
    }
    out.push_str("<!-- examples:end -->");
    out
}

/// The learned examples block of docs/events.md, as the writer produces it.
fn docs_learned_block() -> String {
    let mut out = String::from("<!-- learned-examples:begin -->\n");
    for example in learned_examples() {
        let ev: LearnedEvent = serde_json::from_value(example.clone()).expect("learned event");
        let line = ev.to_line(EventFormat::Native);
        assert_eq!(serde_json::from_str::<Value>(&line).expect("line"), example);
        out.push_str(&format!("`{}` ({}), native:\n\n```json\n{line}\n```\n\n", ev.qtype, ev.addr));
        let pretty = serde_json::to_string_pretty(&learned_ecs(&ev)).expect("json");
        out.push_str(&format!("ECS:\n\n```json\n{pretty}\n```\n\n"));
    }
    out.push_str("<!-- learned-examples:end -->");
    out
}

#[test]
fn docs_show_the_examples_as_written() {
    let path = event_schema_path().with_file_name("events.md");
    for (name, want) in [("examples", docs_block()), ("learned-examples", docs_learned_block())] {
        let text = std::fs::read_to_string(&path).expect("docs/events.md");
        let (b, e) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
        let (Some(begin), Some(end)) = (text.find(&b), text.find(&e)) else {
            panic!("docs/events.md lacks the {name} markers");
        };
        let current = &text[begin..end + e.len()];
        if current != want {
            if std::env::var_os("RPZ_GUARD_BLESS").is_some() {
                std::fs::write(&path, text.replace(current, &want)).expect("write docs/events.md");
                continue;
            }
            panic!(
                "docs/events.md {name} are stale; rerun with RPZ_GUARD_BLESS=1 to rewrite them. Want:\n{want}"
            );
        }
    }
}

#[test]
fn learned_examples_are_what_the_writer_produces_in_both_layouts() {
    let examples = learned_examples();
    assert!(examples.iter().any(|v| v["addr"].as_str().is_some_and(|a| a.contains(':'))), "an IPv6 example");
    for example in examples {
        check_event_line(&example.to_string());
        let ev: LearnedEvent =
            serde_json::from_value(example.clone()).expect("example reads as a learned event");
        assert_eq!(
            ev.to_json(EventFormat::Native),
            example,
            "native example differs from the writer's output"
        );
        assert_eq!(serde_json::from_str::<Value>(&ev.to_line(EventFormat::Native)).expect("line"), example);
        // A learned line is never taken for a detection event.
        assert!(serde_json::from_value::<DetectionEvent>(example.clone()).is_err());
        let e = learned_ecs(&ev);
        check_event_line(&e.to_string());
        assert_eq!(e["destination"]["ip"], example["addr"]);
        assert_eq!(e["server"]["ip"], example["server"]);
        assert_eq!(e["dns"]["question"]["type"], example["qtype"]);
        assert_eq!(format!("{}.", e["dns"]["question"]["name"].as_str().expect("name")), ev.qname);
        assert_eq!(e["rpz_guard"]["classes"], example["classes"]);
        assert_eq!(e["rpz_guard"]["lag_us"], example["lag_us"]);
        assert_eq!(e["event"]["action"], "learned");
    }
}

#[test]
fn schema_refuses_broken_learned_events() {
    let good = learned_examples().remove(0);
    assert!(event_validator().is_valid(&good));
    type Break = Box<dyn Fn(&mut Value)>;
    let broken: Vec<(&str, Break)> = vec![
        ("no addr", Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("addr"))))),
        ("no lag", Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("lag_us"))))),
        ("no classes", Box::new(|v| v["classes"] = json!([]))),
        ("an unknown class", Box::new(|v| v["classes"] = json!(["http"]))),
        ("server not an IP", Box::new(|v| v["server"] = json!("ns1.example."))),
        ("a name without its dot", Box::new(|v| v["qname"] = json!("example.com"))),
        ("another event tag", Box::new(|v| v["event"] = json!("blocked"))),
        ("a detection field", Box::new(|v| v["reason"] = json!("not_registered"))),
    ];
    for (what, f) in broken {
        let mut v = good.clone();
        f(&mut v);
        assert!(!event_validator().is_valid(&v), "the schema accepts a learned event with {what}: {v}");
    }
    let mut e = learned_ecs(&serde_json::from_value(good).expect("event"));
    e["server"]["ip"] = json!("not-an-ip");
    assert!(!event_validator().is_valid(&e), "the schema accepts an ECS learned event with a bad server.ip");
}

#[test]
fn schema_refuses_broken_events() {
    let (good, _) = examples().remove(0);
    assert!(event_validator().is_valid(&good));
    type Break = Box<dyn Fn(&mut Value)>;
    let broken: Vec<(&str, Break)> = vec![
        ("no src", Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("src"))))),
        ("unknown reason", Box::new(|v| v["reason"] = json!("spam"))),
        ("src not an IP", Box::new(|v| v["src"] = json!("10.0.0.300"))),
        ("port 0", Box::new(|v| v["dport"] = json!(0))),
        ("port as a string", Box::new(|v| v["dport"] = json!("25"))),
        ("other version", Box::new(|v| v["version"] = json!(SCHEMA_VERSION + 1))),
        ("unknown field", Box::new(|v| v["extra"] = json!(1))),
        ("proto icmp", Box::new(|v| v["proto"] = json!("icmp"))),
    ];
    for (what, f) in broken {
        let mut v = good.clone();
        f(&mut v);
        assert!(!event_validator().is_valid(&v), "the schema accepts an event with {what}: {v}");
    }
    let mut e = ecs(&serde_json::from_value(good).expect("event"), EventSettings::default());
    e["destination"]["ip"] = json!("not-an-ip");
    assert!(!event_validator().is_valid(&e), "the schema accepts an ECS event with a bad destination.ip");
}
