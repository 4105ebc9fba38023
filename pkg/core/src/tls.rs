//! The one rustls crypto provider of the process.

/// Makes ring rustls's process-wide crypto provider unless one is installed already. Every TLS
/// client of ktrigger (reqwest, kube, lettre, tonic) uses it; two providers would make
/// `kube::Client` panic. The binary calls this first thing in `main`; library users and tests call
/// it before building a client.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_provider_is_installed_once_and_kept() {
        super::ensure_crypto_provider();
        let first = rustls::crypto::CryptoProvider::get_default().cloned();
        super::ensure_crypto_provider();
        let second = rustls::crypto::CryptoProvider::get_default().cloned();
        assert!(first.is_some());
        assert!(std::sync::Arc::ptr_eq(&first.unwrap(), &second.unwrap()));
    }
}
