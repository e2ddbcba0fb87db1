//! The `model:` field of an FL workload: `softmax-<inputs>-<classes>` or
//! `mlp-<inputs>-<hidden>-<classes>`.

/// A model architecture named in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSpec {
    Softmax {
        inputs: u32,
        classes: u32,
    },
    Mlp {
        inputs: u32,
        hidden: u32,
        classes: u32,
    },
}

/// Largest layer width a scenario may ask for (keeps simulated training bounded).
const MAX_WIDTH: u32 = 4_096;

impl ModelSpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected `softmax-<inputs>-<classes>` or `mlp-<inputs>-<hidden>-<classes>`, e.g. `softmax-20-10`";
        let mut parts = text.split('-');
        let kind = parts.next().unwrap_or_default();
        let nums: Result<Vec<u32>, _> = parts.map(str::parse::<u32>).collect();
        let Ok(nums) = nums else {
            return Err(format!("invalid model `{text}`: {expected}"));
        };
        if nums.iter().any(|n| *n == 0 || *n > MAX_WIDTH) {
            return Err(format!(
                "invalid model `{text}`: layer widths must be 1..={MAX_WIDTH}"
            ));
        }
        match (kind, nums.as_slice()) {
            ("softmax", [i, c]) => Ok(ModelSpec::Softmax {
                inputs: *i,
                classes: *c,
            }),
            ("mlp", [i, h, c]) => Ok(ModelSpec::Mlp {
                inputs: *i,
                hidden: *h,
                classes: *c,
            }),
            _ => Err(format!("invalid model `{text}`: {expected}")),
        }
    }

    /// Number of trainable parameters (weights and biases).
    pub fn parameters(self) -> u64 {
        match self {
            ModelSpec::Softmax { inputs, classes } => u64::from(inputs + 1) * u64::from(classes),
            ModelSpec::Mlp {
                inputs,
                hidden,
                classes,
            } => {
                u64::from(inputs + 1) * u64::from(hidden)
                    + u64::from(hidden + 1) * u64::from(classes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_and_rejects_others() {
        assert_eq!(
            ModelSpec::parse("mlp-784-64-10").unwrap(),
            ModelSpec::Mlp {
                inputs: 784,
                hidden: 64,
                classes: 10
            }
        );
        assert_eq!(ModelSpec::parse("softmax-20-10").unwrap().parameters(), 210);
        assert!(
            ModelSpec::parse("cnn-1-2")
                .unwrap_err()
                .contains("expected")
        );
        assert!(ModelSpec::parse("mlp-0-1-2").unwrap_err().contains("1..="));
    }
}
