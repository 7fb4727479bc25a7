//! Where trust starts: the root servers (built in), or a hints file in BIND's
//! root-hints format (`named.root`: `NAME TTL [CLASS] A|AAAA ADDRESS` lines,
//! `;` comments, NS lines naming the servers).
use std::net::IpAddr;

use super::dns::name_from_text;

/// The 13 root servers' names and addresses (IANA root hints, 2023 and later:
/// b.root-servers.net renumbered in November 2023).
pub const ROOT_SERVERS: [(&str, &str, &str); 13] = [
    ("a.root-servers.net", "198.41.0.4", "2001:503:ba3e::2:30"),
    ("b.root-servers.net", "170.247.170.2", "2801:1b8:10::b"),
    ("c.root-servers.net", "192.33.4.12", "2001:500:2::c"),
    ("d.root-servers.net", "199.7.91.13", "2001:500:2d::d"),
    ("e.root-servers.net", "192.203.230.10", "2001:500:a8::e"),
    ("f.root-servers.net", "192.5.5.241", "2001:500:2f::f"),
    ("g.root-servers.net", "192.112.36.4", "2001:500:12::d0d"),
    ("h.root-servers.net", "198.97.190.53", "2001:500:1::53"),
    ("i.root-servers.net", "192.36.148.17", "2001:7fe::53"),
    ("j.root-servers.net", "192.58.128.30", "2001:503:c27::2:30"),
    ("k.root-servers.net", "193.0.14.129", "2001:7fd::1"),
    ("l.root-servers.net", "199.7.83.42", "2001:500:9f::42"),
    ("m.root-servers.net", "202.12.27.33", "2001:dc3::35"),
];

/// Trusted starting servers: names (canonical wire form) and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// Server names.
    pub names: Vec<Vec<u8>>,
    /// Server addresses.
    pub addrs: Vec<IpAddr>,
}

/// A hints file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintsError {
    /// A line with an A/AAAA record whose address does not parse.
    #[error("line {line}: {value:?} is not an IP address")]
    BadAddress {
        /// 1-based line number.
        line: usize,
        /// The text found.
        value: String,
    },
    /// A name that is not a valid domain name.
    #[error("line {line}: {value:?} is not a domain name")]
    BadName {
        /// 1-based line number.
        line: usize,
        /// The text found.
        value: String,
    },
    /// No A or AAAA record at all.
    #[error("no A or AAAA records found")]
    Empty,
}

impl Hints {
    /// The built-in root hints: 13 names, 26 addresses.
    pub fn root() -> Hints {
        let mut h = Hints::default();
        for (name, v4, v6) in ROOT_SERVERS {
            h.names.extend(name_from_text(name));
            h.addrs.extend(v4.parse::<IpAddr>().ok());
            h.addrs.extend(v6.parse::<IpAddr>().ok());
        }
        h
    }

    /// Parses a BIND root-hints file. Other record types are ignored.
    pub fn parse(text: &str) -> Result<Hints, HintsError> {
        let mut h = Hints::default();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let data = line.split(';').next().unwrap_or_default();
            let fields: Vec<&str> = data.split_whitespace().collect();
            // Find the type field: after the owner, optional TTL and class.
            let Some(t) = fields.iter().position(|f| {
                let u = f.to_ascii_uppercase();
                u == "A" || u == "AAAA" || u == "NS"
            }) else {
                continue;
            };
            let (Some(owner), Some(value)) = (fields.first(), fields.get(t + 1)) else { continue };
            if t == 0 {
                continue;
            }
            if fields[t].eq_ignore_ascii_case("NS") {
                continue;
            }
            let addr = value
                .parse::<IpAddr>()
                .map_err(|_| HintsError::BadAddress { line: line_no, value: (*value).to_owned() })?;
            let name = name_from_text(owner)
                .ok_or_else(|| HintsError::BadName { line: line_no, value: (*owner).to_owned() })?;
            if !h.names.contains(&name) {
                h.names.push(name);
            }
            h.addrs.push(addr);
        }
        if h.addrs.is_empty() {
            return Err(HintsError::Empty);
        }
        Ok(h)
    }

    /// Adds the servers of `other`.
    pub fn extend(&mut self, other: Hints) {
        self.names.extend(other.names);
        self.addrs.extend(other.addrs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roots_have_26_addresses() {
        let h = Hints::root();
        assert_eq!(h.names.len(), 13);
        assert_eq!(h.addrs.len(), 26);
    }

    #[test]
    fn parses_bind_root_hints_format() {
        let text = "; comment\n.                        3600000      NS    A.ROOT-SERVERS.NET.\n\
                    A.ROOT-SERVERS.NET.      3600000      A     198.41.0.4\n\
                    A.ROOT-SERVERS.NET.      3600000  IN  AAAA  2001:503:ba3e::2:30\n";
        let h = Hints::parse(text).expect("valid hints");
        assert_eq!(h.addrs.len(), 2);
        assert_eq!(h.names, vec![name_from_text("a.root-servers.net").expect("name")]);
        assert!(matches!(Hints::parse("x. 1 A 300.1.1.1"), Err(HintsError::BadAddress { line: 1, .. })));
        assert_eq!(Hints::parse("; nothing\n"), Err(HintsError::Empty));
    }
}
