//! The probes' settings from the environment. Included with `#[path]` by
//! `examples/instantiate_probe.rs` here and the hypervisor's
//! `saga_probe.rs` and `lifecycle_probe.rs`.

/// An environment variable's number, or `default` when it is unset; a
/// value that is not a number stops the probe, naming it.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
        Err(_) => default,
    }
}
