//! Durations as an operator writes them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written `90s`, `15m`, `1h`, `30d`, `250ms`, or as whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// Whole seconds.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// Parses the written form.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let text = text.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        if text.starts_with('-') {
            return Err(format!(
                "`{text}` is negative: it must be greater than zero"
            ));
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 1h or 30d"))?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => {
                return Err(format!(
                    "`{text}` has an unknown unit (use ms, s, m, h or d)"
                ))
            }
        };
        ms.map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| format!("`{text}` is too long"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like 90s, 15m, 1h or 30d")
            }
            fn visit_u64<E: serde::de::Error>(self, s: u64) -> Result<Dur, E> {
                Ok(Dur::secs(s))
            }
            fn visit_i64<E: serde::de::Error>(self, s: i64) -> Result<Dur, E> {
                u64::try_from(s).map(Dur::secs).map_err(|_| {
                    E::custom(format!("{s} is negative: it must be greater than zero"))
                })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Dur, E> {
                Dur::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}
