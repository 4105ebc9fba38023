//! ktrigger sources.
