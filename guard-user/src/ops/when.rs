//! Times as operators type and read them: durations (`90s`, `12h`,
//! `7d`, `1d12h`), instants (`2026-12-31`, `2026-12-31T18:00:00Z`,
//! `2026-12-31 18:00`, `@1798761600`), and the UTC text `explain` and
//! `list` print. All instants are Unix seconds, UTC.

/// Seconds per unit letter.
const UNITS: [(char, u64); 5] = [('s', 1), ('m', 60), ('h', 3600), ('d', 86_400), ('w', 604_800)];

/// Parses a duration: one or more `<number><unit>` with units `s`, `m`,
/// `h`, `d`, `w` (`90s`, `12h`, `1d12h`), in seconds; zero is refused.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{s:?} is not a duration ({why}; e.g. 90s, 30m, 12h, 7d, 1d12h)");
    let mut total: u64 = 0;
    let mut num = String::new();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let Some((_, mult)) = UNITS.iter().find(|(u, _)| *u == ch) else {
            return Err(bad("unknown unit"));
        };
        let n: u64 = num.parse().map_err(|_| bad("a number must come before each unit"))?;
        total = n.checked_mul(*mult).and_then(|v| total.checked_add(v)).ok_or_else(|| bad("too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad("the last number has no unit"));
    }
    if total == 0 {
        return Err(bad("zero"));
    }
    Ok(total)
}

/// Parses an `--expires` value: a duration from `now` or an instant (UTC);
/// the result must lie in the future.
pub fn parse_expiry(s: &str, now: u64) -> Result<u64, String> {
    let at = match parse_duration(s) {
        Ok(d) => now.checked_add(d).ok_or_else(|| format!("{s:?} is too far in the future"))?,
        Err(dur_err) => parse_instant(s).map_err(|inst_err| {
            format!("--expires {s:?}: neither a duration nor a time: {dur_err}; {inst_err}")
        })?,
    };
    if at <= now {
        return Err(format!("--expires {s:?} is in the past ({})", utc(at)));
    }
    Ok(at)
}

/// Parses an instant: `@UNIXSECONDS`, `YYYY-MM-DD` (midnight UTC),
/// `YYYY-MM-DDTHH:MM[:SS][Z]` or the same with a space for `T`.
pub fn parse_instant(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a time (YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS]Z or @UNIXSECONDS, UTC)");
    if let Some(secs) = s.strip_prefix('@') {
        return secs.parse().map_err(|_| bad());
    }
    let s2 = s.strip_suffix('Z').or_else(|| s.strip_suffix(" UTC")).unwrap_or(s);
    let (date, time) = match s2.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s2, None),
    };
    let num =
        |t: &str, lo: u32, hi: u32| t.parse::<u32>().ok().filter(|v| (lo..=hi).contains(v) && !t.is_empty());
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, dd] = d.as_slice() else { return Err(bad()) };
    let (y, m, dd) = (
        num(y, 1970, 9999).ok_or_else(bad)?,
        num(m, 1, 12).ok_or_else(bad)?,
        num(dd, 1, 31).ok_or_else(bad)?,
    );
    if dd > days_in_month(y, m) {
        return Err(bad());
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let parts: Vec<&str> = t.split(':').collect();
            let (h, mi, se) = match parts.as_slice() {
                [h, mi] => (*h, *mi, "0"),
                [h, mi, se] => (*h, *mi, *se),
                _ => return Err(bad()),
            };
            let (h, mi, se) = (
                num(h, 0, 23).ok_or_else(bad)?,
                num(mi, 0, 59).ok_or_else(bad)?,
                num(se, 0, 59).ok_or_else(bad)?,
            );
            u64::from(h * 3600 + mi * 60 + se)
        }
    };
    let days = days_from_civil(i64::from(y), m, dd);
    u64::try_from(days).map(|d| d * 86_400 + secs_of_day).map_err(|_| bad())
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; H. Hinnant's
/// algorithm, the inverse of the one in [`utc`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds.
pub fn utc(secs: u64) -> String {
    crate::daemon::utc(secs.saturating_mul(1000))
}

/// A span in the largest two units: `3d 4h`, `5h 2m`, `40s`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `UTC text (in 3d 4h)` / `(5m 2s ago)` relative to `now`.
pub fn utc_relative(secs: u64, now: u64) -> String {
    if secs >= now {
        format!("{} (in {})", utc(secs), span(secs - now))
    } else {
        format!("{} ({} ago)", utc(secs), span(now - secs))
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    crate::events::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("1d12h"), Ok(129_600));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        for bad in ["", "12", "h", "1x", "0s", "1d 2h", "-1d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn instants_round_trip_with_utc() {
        let t = parse_instant("2026-12-07T01:02:03Z").expect("instant");
        assert_eq!(t, 1_796_601_600 + 3723);
        assert_eq!(utc(t), "2026-12-07 01:02:03 UTC");
        assert_eq!(parse_instant("2026-12-07 01:02"), Ok(1_796_601_600 + 3720));
        assert_eq!(parse_instant("2026-12-07"), Ok(1_796_601_600));
        assert_eq!(parse_instant("2000-02-29"), Ok(951_782_400));
        assert_eq!(parse_instant("2026-12-07 01:02:03 UTC"), Ok(t));
        assert_eq!(parse_instant("@1796601600"), Ok(1_796_601_600));
        for bad in ["2026-02-29", "2026-13-01", "2026-12-07T25:00", "07/12/2026", "2026-12-07T01"] {
            assert!(parse_instant(bad).is_err(), "{bad:?} accepted");
        }
        for days in [0i64, 1, 59, 60, 365, 10_957, 20_794, 47_482] {
            let secs = u64::try_from(days).expect("positive") * 86_400;
            let text = utc(secs);
            assert_eq!(parse_instant(&text), Ok(secs), "{text}");
        }
    }

    #[test]
    fn expiry_is_in_the_future() {
        let now = 1_796_601_600;
        assert_eq!(parse_expiry("7d", now), Ok(now + 7 * 86_400));
        assert_eq!(parse_expiry("2026-12-08", now), Ok(now + 86_400));
        assert!(parse_expiry("2026-12-06", now).expect_err("past").contains("past"));
        assert!(parse_expiry("soon", now).is_err());
    }

    #[test]
    fn spans() {
        assert_eq!(span(40), "40s");
        assert_eq!(span(302), "5m 2s");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(utc_relative(100, 40), format!("{} (in 1m 0s)", utc(100)));
    }
}
