//! The process-wide TLS crypto provider.
//!
//! reqwest is built without a provider of its own (`rustls-no-provider`), so every
//! HTTP client in the process, the alert channels' and any other, panics when built
//! before one is installed. ring is the provider lettre already uses for SMTP
//! STARTTLS; rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
//! exchange, but the alternative, aws-lc-rs, needs cmake and a C toolchain in every
//! build, and alert payloads are not long-lived secrets.

/// Installs ring as the default provider; later calls, or a provider installed by
/// someone else first, are harmless.
pub fn install_crypto_provider() {
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}
