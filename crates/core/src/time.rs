//! Time as a value: milliseconds since the Unix epoch, written as RFC 3339 UTC on the wire.
//!
//! The core never reads a clock. The shell passes `now` into every call.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A point in time, in milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(u64);

/// A string was not an RFC 3339 UTC timestamp of the form `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {0:?}: expected RFC 3339 UTC such as 2026-01-02T03:04:05.678Z")]
pub struct InvalidTimestamp(pub String);

impl Timestamp {
    /// The epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This time plus a duration (saturating).
    pub fn add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 UTC with millisecond precision.
    pub fn to_rfc3339(self) -> String {
        match self.rfc3339_text() {
            Some(text) => String::from_utf8(text.to_vec()).expect("ASCII"),
            None => {
                let (y, m, d, secs, ms) = self.parts();
                format!(
                    "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
                    secs / 3600,
                    (secs / 60) % 60,
                    secs % 60
                )
            }
        }
    }

    /// Year, month, day, second of the day and millisecond.
    fn parts(self) -> (i64, u32, u32, u64, u64) {
        let secs = self.0 / 1000;
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        (y, m, d, secs % 86_400, self.0 % 1000)
    }

    /// [`Timestamp::to_rfc3339`]'s text, written on the stack, for the years with four digits
    /// (every timestamp on the wire and in the stores: they are written for every event).
    fn rfc3339_text(self) -> Option<[u8; 24]> {
        let (y, m, d, secs, ms) = self.parts();
        if !(0..=9999).contains(&y) {
            return None;
        }
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for digit in text[at..at + width].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, y as u64);
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, secs / 3600);
        put(14, 2, (secs / 60) % 60);
        put(17, 2, secs % 60);
        put(20, 3, ms);
        Some(text)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (fractions beyond milliseconds are truncated).
    pub fn parse_rfc3339(s: &str) -> Result<Self, InvalidTimestamp> {
        let bad = || InvalidTimestamp(s.to_string());
        let b = s.as_bytes();
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u64, InvalidTimestamp> {
            let part = s.get(r).ok_or_else(bad)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u64>().map_err(|_| bad())
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo)
            || d == 0
            || d > days_in_month(y as i64, mo as u32)
            || h > 23
            || mi > 59
            || se > 60
        {
            return Err(bad());
        }
        let rest = &s[19..];
        let (frac, tail) = match rest.strip_prefix('.') {
            Some(r) => {
                let digits = r.bytes().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 {
                    return Err(bad());
                }
                let mut ms = 0u64;
                for (i, c) in r[..digits].bytes().take(3).enumerate() {
                    ms += u64::from(c - b'0') * [100, 10, 1][i];
                }
                (ms, &r[digits..])
            }
            None => (0, rest),
        };
        if tail != "Z" && tail != "+00:00" {
            return Err(bad());
        }
        if y < 1970 {
            return Err(bad());
        }
        let days = days_from_civil(y as i64, mo as u32, d as u32) as u64;
        Ok(Timestamp(
            ((days * 86_400 + h * 3600 + mi * 60 + se) * 1000) + frac,
        ))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rfc3339_text() {
            Some(text) => f.write_str(std::str::from_utf8(&text).expect("ASCII")),
            None => f.write_str(&self.to_rfc3339()),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339_text() {
            Some(text) => s.serialize_str(std::str::from_utf8(&text).expect("ASCII")),
            None => s.serialize_str(&self.to_rfc3339()),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TimestampVisitor)
    }
}

/// Reads a timestamp from the string as the deserializer has it (no copy).
struct TimestampVisitor;

impl serde::de::Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
        Timestamp::parse_rfc3339(s).map_err(E::custom)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        let t = Timestamp::parse_rfc3339("2026-11-24T05:41:07.250Z").unwrap();
        assert_eq!(t.as_millis(), 1_795_498_867_250);
        assert_eq!(t.to_rfc3339(), "2026-11-24T05:41:07.250Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2024-02-29T00:00:00Z")
                .unwrap()
                .to_rfc3339(),
            "2024-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn refuses_malformed() {
        for s in [
            "",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
        ] {
            assert!(Timestamp::parse_rfc3339(s).is_err(), "{s}");
        }
    }

    /// How the text was formatted before it was written on the stack.
    fn formatted(t: Timestamp) -> String {
        let (ms, secs) = (t.0 % 1000, t.0 / 1000);
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }

    #[test]
    fn the_text_is_the_same_past_the_four_digit_years() {
        for ms in [253_402_300_799_999, 253_402_300_800_000, u64::MAX] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(t.to_rfc3339(), formatted(t));
            assert_eq!(t.to_string(), formatted(t));
        }
        assert_eq!(
            Timestamp::from_millis(253_402_300_799_999).to_rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            serde_json::from_str::<Timestamp>("5")
                .unwrap_err()
                .to_string(),
            "invalid type: integer `5`, expected a string at line 1 column 1"
        );
    }

    proptest! {
        #[test]
        fn round_trips(ms in 0u64..8_000_000_000_000) {
            let t = Timestamp::from_millis(ms);
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        }

        #[test]
        fn text_and_json_are_what_formatting_gave(ms in 0u64..300_000_000_000_000) {
            let t = Timestamp::from_millis(ms);
            prop_assert_eq!(t.to_rfc3339(), formatted(t));
            prop_assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", formatted(t)));
        }
    }
}
