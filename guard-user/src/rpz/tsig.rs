//! TSIG keys (RFC 8945) read from BIND key files.
//!
//! Accepts what `tsig-keygen` / `ddns-confgen` print and what `named.conf`
//! includes:
//!
//! ```text
//! key "rpz-update" {
//!     algorithm hmac-sha256;
//!     secret "base64...";
//! };
//! ```
//!
//! Comments (`#`, `//`, `/* */`) are skipped. hickory 0.25 signs with
//! hmac-sha256/384/512 only; other algorithms are refused with a clear error.

use std::{fmt, path::Path};

use hickory_proto::{
    dnssec::{rdata::tsig::TsigAlgorithm, tsig::TSigner},
    rr::Name,
};

/// Allowed clock skew between us and the server, seconds (RFC 8945 5.2.3).
pub const FUDGE: u16 = 300;

/// The MAC algorithms we can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgo {
    /// `hmac-sha256` (BIND's default).
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlgo {
    /// The algorithm for a BIND name such as `hmac-sha256`.
    pub fn from_bind_name(name: &str) -> Option<TsigAlgo> {
        match name.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(TsigAlgo::HmacSha256),
            "hmac-sha384" => Some(TsigAlgo::HmacSha384),
            "hmac-sha512" => Some(TsigAlgo::HmacSha512),
            _ => None,
        }
    }

    /// BIND's name for the algorithm.
    pub fn bind_name(self) -> &'static str {
        match self {
            TsigAlgo::HmacSha256 => "hmac-sha256",
            TsigAlgo::HmacSha384 => "hmac-sha384",
            TsigAlgo::HmacSha512 => "hmac-sha512",
        }
    }

    fn hickory(self) -> TsigAlgorithm {
        match self {
            TsigAlgo::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlgo::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlgo::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

/// A TSIG key: name, algorithm and the raw secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// The key name, lower case, without trailing dot.
    pub name: String,
    /// The MAC algorithm.
    pub algorithm: TsigAlgo,
    /// The secret (decoded from BIND's base64).
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TsigKeyError {
    /// The file cannot be read.
    #[error("TSIG key file {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's content is not a usable key.
    #[error("TSIG key file {file}: {why}")]
    Invalid {
        /// The file (or `<text>` when parsed from a string).
        file: String,
        /// What is wrong.
        why: String,
    },
}

impl TsigKey {
    /// Reads the first key of a BIND key file.
    pub fn from_file(path: &Path) -> Result<TsigKey, TsigKeyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| TsigKeyError::Read { file: file.clone(), source })?;
        let mut keys = parse_keys(&text).map_err(|why| TsigKeyError::Invalid { file: file.clone(), why })?;
        if keys.is_empty() {
            return Err(TsigKeyError::Invalid { file, why: "no key statement found".into() });
        }
        Ok(keys.swap_remove(0))
    }

    /// Parses every `key` statement of BIND key-file text.
    pub fn parse_all(text: &str) -> Result<Vec<TsigKey>, TsigKeyError> {
        parse_keys(text).map_err(|why| TsigKeyError::Invalid { file: "<text>".into(), why })
    }

    /// A hickory signer for this key.
    pub fn signer(&self) -> Result<TSigner, TsigKeyError> {
        let invalid = |why: String| TsigKeyError::Invalid { file: format!("key {}", self.name), why };
        let name = Name::from_ascii(format!("{}.", self.name))
            .map_err(|e| invalid(format!("bad key name {:?}: {e}", self.name)))?;
        TSigner::new(self.secret.clone(), self.algorithm.hickory(), name, FUDGE)
            .map_err(|e| invalid(format!("cannot sign with {}: {e}", self.algorithm.bind_name())))
    }

    /// The key as a BIND `key` statement (for named.conf or nsupdate -k).
    pub fn to_bind_conf(&self) -> String {
        format!(
            "key \"{}\" {{\n\talgorithm {};\n\tsecret \"{}\";\n}};\n",
            self.name,
            self.algorithm.bind_name(),
            data_encoding::BASE64.encode(&self.secret)
        )
    }
}

/// Tokens of BIND's configuration grammar: words, quoted strings, `{ } ;`.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let b = text.as_bytes();
    let (mut i, mut out) = (0usize, Vec::new());
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' || (c == b'/' && b.get(i + 1) == Some(&b'/')) {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let end = text[i + 2..].find("*/").ok_or("unterminated /* comment")?;
            i += 2 + end + 2;
        } else if c == b'"' {
            let end = text[i + 1..].find('"').ok_or("unterminated quoted string")?;
            out.push(text[i + 1..i + 1 + end].to_owned());
            i += end + 2;
        } else if matches!(c, b'{' | b'}' | b';') {
            out.push((c as char).to_string());
            i += 1;
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'{' | b'}' | b';' | b'"') {
                i += 1;
            }
            out.push(text[start..i].to_owned());
        }
    }
    Ok(out)
}

fn parse_keys(text: &str) -> Result<Vec<TsigKey>, String> {
    let toks = tokenize(text)?;
    let mut keys = Vec::new();
    let mut i = 0;
    let tok = |i: usize| toks.get(i).map(String::as_str);
    while i < toks.len() {
        if toks[i] != "key" {
            return Err(format!("expected `key`, found {:?}", toks[i]));
        }
        let name = tok(i + 1).ok_or("key statement without a name")?;
        if name == "{" || name.is_empty() {
            return Err("key statement without a name".into());
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            // `key . {` would name the key with the root name: nothing can sign with it.
            return Err("key statement with an empty name (the root name cannot name a TSIG key)".into());
        }
        if tok(i + 2) != Some("{") {
            return Err(format!("key {name}: expected '{{'"));
        }
        i += 3;
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match tok(i) {
                None => return Err(format!("key {name}: missing '}}'")),
                Some("}") => break,
                Some(field) => {
                    let value = tok(i + 1).ok_or_else(|| format!("key {name}: {field} without a value"))?;
                    if tok(i + 2) != Some(";") {
                        return Err(format!("key {name}: expected ';' after {field} {value}"));
                    }
                    match field {
                        "algorithm" => {
                            algorithm = Some(TsigAlgo::from_bind_name(value).ok_or_else(|| {
                                format!(
                                    "key {name}: algorithm {value} is not supported (use hmac-sha256, hmac-sha384 or hmac-sha512)"
                                )
                            })?);
                        }
                        "secret" => {
                            let clean: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                            let raw = data_encoding::BASE64
                                .decode(clean.as_bytes())
                                .map_err(|e| format!("key {name}: secret is not valid base64: {e}"))?;
                            if raw.is_empty() {
                                return Err(format!("key {name}: empty secret"));
                            }
                            secret = Some(raw);
                        }
                        other => return Err(format!("key {name}: unknown field {other}")),
                    }
                    i += 3;
                }
            }
        }
        // After '}' comes ';'.
        if tok(i + 1) != Some(";") {
            return Err(format!("key {name}: expected ';' after '}}'"));
        }
        i += 2;
        keys.push(TsigKey {
            algorithm: algorithm.ok_or_else(|| format!("key {name}: no algorithm"))?,
            secret: secret.ok_or_else(|| format!("key {name}: no secret"))?,
            name,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `tsig_keyfile` fuzz target: `key . {` was accepted as a
    /// key with an empty name, which its own `key ""` statement then failed.
    #[test]
    fn root_name_is_not_a_key_name() {
        for name in [".", "\"..\"", "\"\""] {
            let text = format!("key {name} {{ algorithm hmac-sha512; secret \"YWJj\"; }};");
            let err = TsigKey::parse_all(&text).expect_err("refused");
            assert!(
                err.to_string().contains("without a name") || err.to_string().contains("empty name"),
                "{err}"
            );
        }
        let ok = TsigKey::parse_all("key k. { algorithm hmac-sha256; secret \"YWJj\"; };").expect("parse");
        assert_eq!(ok[0].name, "k");
        assert_eq!(TsigKey::parse_all(&ok[0].to_bind_conf()).expect("round trip"), ok);
    }

    #[test]
    fn tsig_keygen_output_parses() {
        let text = "key \"rpz-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWJ5dGVz\";\n};\n";
        let keys = TsigKey::parse_all(text).expect("parse");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].name, "rpz-update");
        assert_eq!(keys[0].algorithm, TsigAlgo::HmacSha256);
        assert_eq!(keys[0].secret, b"secret-bytes");
        assert!(keys[0].signer().is_ok());
        assert_eq!(TsigKey::parse_all(&keys[0].to_bind_conf()).expect("round trip"), keys);
        assert!(!format!("{:?}", keys[0]).contains("c2Vj"));
    }

    #[test]
    fn comments_unquoted_and_several_keys() {
        let text = "# made by hand\n// two keys\nkey a.example. { algorithm \"hmac-sha512\"; /* x */ secret \"c2VjcmV0\"; };\nkey \"b\" { secret \"c2VjcmV0\"; algorithm HMAC-SHA384; };";
        let keys = TsigKey::parse_all(text).expect("parse");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "a.example");
        assert_eq!(keys[0].algorithm, TsigAlgo::HmacSha512);
        assert_eq!(keys[1].algorithm, TsigAlgo::HmacSha384);
    }

    #[test]
    fn bad_keys_say_why() {
        let cases = [
            ("key \"k\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };", "not supported"),
            ("key \"k\" { algorithm hmac-sha256; secret \"!!!\"; };", "base64"),
            ("key \"k\" { algorithm hmac-sha256; };", "no secret"),
            ("key \"k\" { secret \"c2VjcmV0\"; };", "no algorithm"),
            ("key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\" };", "expected ';'"),
            ("key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; }", "expected ';' after '}'"),
            ("options { };", "expected `key`"),
            ("key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0", "unterminated"),
        ];
        for (text, why) in cases {
            match TsigKey::parse_all(text) {
                Err(TsigKeyError::Invalid { why: w, .. }) => assert!(w.contains(why), "{text}: {w}"),
                other => panic!("{text}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_file_is_named() {
        let e = TsigKey::from_file(Path::new("/nonexistent/rpz.key")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/rpz.key"), "{e}");
    }
}
