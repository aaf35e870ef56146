//! The probes' settings from the environment. Included with `#[path]` by
//! `examples/instantiate_probe.rs` here and the hypervisor's
//! `saga_probe.rs` and `lifecycle_probe.rs`.

/// An environment variable's number, or `default` when it is unset; a
/// value that is not a number stops the probe, naming it.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    env_opt_number(name).unwrap_or(default)
}

/// An environment variable's number, `None` when it is unset; a value that
/// is not a number stops the probe, naming it.
pub fn env_opt_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let s = std::env::var(name).ok()?;
    Some(
        s.parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
    )
}
