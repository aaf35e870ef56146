//! The `ahv` command (see the `ahv_cli` library).

/// mimalloc frees memory allocated by another thread without a lock; glibc's
/// allocator locks the allocating thread's arena, which the audit flusher
/// (freeing what request threads allocated) made contended: ~1.3 futex calls
/// per audited session, measured with `lifecycle_probe`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ahv_cli::main()
}
