//! ktrigger destinations.
