//! The daemon's TOML configuration: arbitrary text is a clear error naming
//! the key and value, or a valid configuration, never a panic. A valid
//! configuration printed back (as `rpz-guard check-config` does) reads
//! back to the same value and still validates.
#![no_main]

use std::path::Path;

use guard_user::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    let Ok(cfg) = Config::parse(text, path) else { return };
    let printed = toml::to_string_pretty(&cfg).expect("a valid configuration serialises");
    let back = Config::parse(&printed, path)
        .unwrap_or_else(|e| panic!("printed configuration rejected: {e}\n{printed}"));
    assert_eq!(back, cfg, "configuration changed through print and parse\n{printed}");
});
