//! The catalogue of source and destination types: `ktrigger sources` and `ktrigger destinations`.

use std::process::ExitCode;

use ktrigger_core::registry::TypeDoc;

use ktrigger_sources::WebhookListener;

use crate::offline_registry;

/// `ktrigger sources`.
pub fn list_sources() -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline());
    print_docs(&registry.source_docs());
    Ok(ExitCode::SUCCESS)
}

/// `ktrigger destinations`.
pub fn list_destinations() -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline());
    print_docs(&registry.destination_docs());
    Ok(ExitCode::SUCCESS)
}

fn print_docs(docs: &[&TypeDoc]) {
    for doc in docs {
        let aliases =
            if doc.aliases.is_empty() { String::new() } else { format!(" (also: {})", doc.aliases.join(", ")) };
        println!("{}{aliases}\n  {}\n  properties:", doc.name, doc.summary);
        for property in doc.properties {
            let required = if property.required { " (required)" } else { "" };
            println!("    {}{required}: {}", property.name, property.description);
        }
        println!("  example:");
        for line in doc.example.trim_end().lines() {
            println!("    {line}");
        }
        println!();
    }
}
