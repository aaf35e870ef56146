//! Fan-out policies (SEMANTICS.md, "Sagas"): how many branches of a group must
//! succeed for the group to succeed.

use serde::{Deserialize, Serialize};

/// The success rule of a fan-out group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FanoutPolicy {
    /// Every branch succeeds (vacuously true with no branches).
    All,
    /// Strictly more than half succeed.
    Majority,
    /// At least one succeeds (false with no branches).
    Any,
}

impl FanoutPolicy {
    /// The policy's name as definitions spell it (`all`, `majority`, `any`).
    pub fn as_str(self) -> &'static str {
        match self {
            FanoutPolicy::All => "all",
            FanoutPolicy::Majority => "majority",
            FanoutPolicy::Any => "any",
        }
    }

    /// Whether `succeeded` successes out of `total` branches satisfy the policy.
    pub fn satisfied(self, succeeded: usize, total: usize) -> bool {
        match self {
            FanoutPolicy::All => succeeded >= total,
            // 2s > t, not s > t/2: integer division would make 2 of 5 a majority.
            FanoutPolicy::Majority => succeeded.saturating_mul(2) > total,
            FanoutPolicy::Any => succeeded >= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FanoutPolicy::*;

    #[test]
    fn all_needs_every_branch_and_is_vacuously_true_for_none() {
        assert!(All.satisfied(0, 0));
        assert!(All.satisfied(3, 3));
        assert!(!All.satisfied(2, 3));
        assert!(!All.satisfied(0, 1));
    }

    #[test]
    fn majority_needs_strictly_more_than_half() {
        assert!(!Majority.satisfied(0, 0));
        assert!(Majority.satisfied(1, 1));
        assert!(!Majority.satisfied(1, 2));
        assert!(Majority.satisfied(2, 2));
        assert!(Majority.satisfied(2, 3));
        assert!(!Majority.satisfied(2, 4));
        assert!(Majority.satisfied(3, 4));
        assert!(!Majority.satisfied(2, 5));
        assert!(Majority.satisfied(3, 5));
    }

    #[test]
    fn any_needs_one_and_is_false_for_none() {
        assert!(!Any.satisfied(0, 0));
        assert!(!Any.satisfied(0, 3));
        assert!(Any.satisfied(1, 3));
        assert!(Any.satisfied(3, 3));
    }

    #[test]
    fn policies_parse_from_lowercase_names() {
        let p: Vec<super::FanoutPolicy> =
            serde_json::from_str(r#"["all","majority","any"]"#).unwrap();
        assert_eq!(p, vec![All, Majority, Any]);
        assert!(serde_json::from_str::<super::FanoutPolicy>(r#""ALL""#).is_err());
    }
}
