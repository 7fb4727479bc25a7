//! A minimal SMTP client for the lab: walks one mail through a server.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    time::Duration,
};

/// Delivers one mail over `stream` (banner, EHLO, MAIL, RCPT, DATA, QUIT);
/// returns the server's banner. Errors name the step and the reply.
pub fn deliver(stream: TcpStream) -> Result<String, String> {
    stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| format!("set timeout: {e}"))?;
    let mut out = stream.try_clone().map_err(|e| format!("clone stream: {e}"))?;
    let mut reader = BufReader::new(stream);
    // Multi-line replies: "250-…" continues, "250 …" ends.
    let mut expect = |code: &str| -> Result<String, String> {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| format!("read reply (want {code}): {e}"))?;
            if !line.starts_with(code) {
                return Err(format!("expected {code}, got {line:?}"));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    };
    let banner = expect("220")?;
    for (cmd, code) in [
        ("EHLO pc.lab\r\n", "250"),
        ("MAIL FROM:<a@pc.lab>\r\n", "250"),
        ("RCPT TO:<b@example.net>\r\n", "250"),
        ("DATA\r\n", "354"),
        ("Subject: hi\r\n\r\nbody\r\n.\r\n", "250"),
        ("QUIT\r\n", "221"),
    ] {
        out.write_all(cmd.as_bytes()).map_err(|e| format!("send {}: {e}", cmd.trim()))?;
        expect(code)?;
    }
    Ok(banner)
}
