//! Checkpoints (SEMANTICS.md, "Sagas"): a step with a goal records
//! `sha256("{goal}:{step_id}")`; a replay skips the step while its recorded
//! hash equals the hash for its current goal, so changing the goal re-runs it.

use sha2::{Digest, Sha256};

/// The checkpoint hash of `step_id` for `goal`: lowercase hex SHA-256 of `"{goal}:{step_id}"`.
pub fn checkpoint_hash(goal: &str, step_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(goal.as_bytes());
    h.update(b":");
    h.update(step_id.as_bytes());
    hex::encode(h.finalize())
}

/// Whether a recorded checkpoint still holds for the step's current goal.
pub fn checkpoint_valid(recorded: Option<&str>, goal: Option<&str>, step_id: &str) -> bool {
    match (recorded, goal) {
        (Some(r), Some(g)) => r == checkpoint_hash(g, step_id),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_goal_colon_step() {
        // Known answers from coreutils: printf 'g:s' | sha256sum, printf ':' | sha256sum.
        assert_eq!(
            checkpoint_hash("g", "s"),
            "85942b8c2e24f56fe93e68281b7cfd7d17207349e3df4198ee8b6e7ff28ddfdb"
        );
        assert_eq!(
            checkpoint_hash("", ""),
            "e7ac0786668e0ff0f02b62bd04f45ff636fd82db63b1104601c975dc005f3a67"
        );
    }

    #[test]
    fn a_changed_goal_invalidates_the_checkpoint() {
        let h = checkpoint_hash("ship v1", "deploy");
        assert!(checkpoint_valid(Some(&h), Some("ship v1"), "deploy"));
        assert!(!checkpoint_valid(Some(&h), Some("ship v2"), "deploy"));
        assert!(!checkpoint_valid(Some(&h), Some("ship v1"), "other"));
        assert!(!checkpoint_valid(None, Some("ship v1"), "deploy"));
        assert!(!checkpoint_valid(Some(&h), None, "deploy"));
    }

    #[test]
    fn the_step_id_is_part_of_the_hash() {
        assert_ne!(checkpoint_hash("goal", "a"), checkpoint_hash("goal", "b"));
    }
}
