//! Stand-alone "internet" responder (SMTP 25/465/587, DNS 53, echo 7) in the
//! current network namespace, e.g. `ip netns exec <prefix>-inet lab-responder`.
use guard_tests::{dns::FixedAnswers, responder::Responder};

fn main() {
    match Responder::start(None, FixedAnswers::default()) {
        Ok(responder) => responder.wait_forever(),
        Err(e) => {
            eprintln!("lab-responder: {e}");
            std::process::exit(1);
        }
    }
}
