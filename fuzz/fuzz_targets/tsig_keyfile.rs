//! BIND key files (`key "name" { algorithm ...; secret "..."; };`, with
//! comments and several keys): arbitrary text is a clear error or keys,
//! never a panic. Every parsed key written back as a `key` statement parses
//! to the same key, and a hickory signer can be built for it or refused
//! with an error.
#![no_main]

use guard_user::rpz::tsig::TsigKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(keys) = TsigKey::parse_all(text) else { return };
    for k in &keys {
        let conf = k.to_bind_conf();
        let back =
            TsigKey::parse_all(&conf).unwrap_or_else(|e| panic!("own key statement rejected: {e}\n{conf}"));
        assert_eq!(back.len(), 1, "{conf}");
        assert_eq!(back[0].name, k.name);
        assert_eq!(back[0].algorithm, k.algorithm);
        assert_eq!(back[0].secret, k.secret);
        let _ = k.signer();
    }
});
