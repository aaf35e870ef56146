//! The workspace hack: no code, only dependencies. `cargo hakari` generates its `Cargo.toml` with
//! the features the whole workspace turns on, and every host crate depends on it, so each
//! dependency (wasmtime's among them) is built once per profile whatever a command selects
//! (`.config/hakari.toml`; the README's "One build for every command").
