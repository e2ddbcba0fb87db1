//! Durations written the way people write them in scenario files: `250ms`, `90s`, `20m`, `1h`.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of (virtual or wall) time, stored in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    ms: u64,
}

/// The longest span a scenario may name: 30 days. Bounds every virtual-time loop.
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3_600_000;

const UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

impl Duration {
    pub const fn from_ms(ms: u64) -> Self {
        Self { ms }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self { ms: secs * 1_000 }
    }

    pub const fn as_ms(self) -> u64 {
        self.ms
    }

    /// Parses `90s`, `1.5m`, `250ms`, `2h`. Returns a message saying what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let expected = "expected a number followed by a unit (ms, s, m or h), e.g. `90s` or `20m`";
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration `{text}`: missing unit; {expected}"))?;
        let (num, unit) = t.split_at(split);
        let factor = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                format!("invalid duration `{text}`: unknown unit `{unit}`; {expected}")
            })?;
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid duration `{text}`: `{num}` is not a number; {expected}")
        })?;
        let ms = value * factor as f64;
        if !ms.is_finite() || ms < 0.0 || ms > MAX_DURATION_MS as f64 {
            return Err(format!(
                "invalid duration `{text}`: must be between 0 and 30 days"
            ));
        }
        Ok(Self {
            ms: ms.round() as u64,
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.ms;
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, factor) in UNITS.iter().rev() {
            if ms.is_multiple_of(*factor) {
                return write!(f, "{}{unit}", ms / factor);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `90s`, `20m` or `250ms`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: missing unit; write `{v}s` or `{v}ms`"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: missing unit; write `{v}s` or `{v}ms`"
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: missing unit; write `{v}s`"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$",
            "description": "A duration: a number and a unit (ms, s, m, h), e.g. `90s`, `20m`.",
            "examples": ["500ms", "90s", "20m", "1h"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_units() {
        assert_eq!(Duration::parse("250ms").unwrap().as_ms(), 250);
        assert_eq!(Duration::parse("90s").unwrap().as_ms(), 90_000);
        assert_eq!(Duration::parse("1.5m").unwrap().as_ms(), 90_000);
        assert_eq!(Duration::parse("2h").unwrap().as_ms(), 7_200_000);
        assert_eq!(Duration::from_ms(90_000).to_string(), "90s");
        assert_eq!(Duration::from_ms(1_200_000).to_string(), "20m");
        assert_eq!(Duration::from_ms(1_500).to_string(), "1500ms");
    }

    #[test]
    fn rejects_bad_text_with_the_expected_shape() {
        let e = Duration::parse("20x").unwrap_err();
        assert!(e.contains("unknown unit `x`"), "{e}");
        let e = Duration::parse("20").unwrap_err();
        assert!(e.contains("missing unit"), "{e}");
        let e = Duration::parse("99999h").unwrap_err();
        assert!(e.contains("30 days"), "{e}");
    }
}
