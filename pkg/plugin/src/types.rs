//! Plugin types in the registry: each source and destination type a plugin described becomes a
//! factory beside the built-in ones, checking properties against the type's JSON Schema.

use std::sync::Arc;

use ktrigger_core::{
    BuildContext, Destination, DestinationFactory, EventMappings, PropertyError, Registry, Source, SourceFactory,
    TypeDoc,
};
use serde_json::Value;

use crate::destination::PluginDestination;
use crate::error::PluginError;
use crate::manager::{Plugin, PluginManager};
use crate::proto::{Kind, Trigger, TypeInfo, ValidateRequest};
use crate::source::PluginSource;

/// Most schema errors reported for one set of properties.
const MAX_SCHEMA_ERRORS: usize = 5;
/// Longest schema or plugin error message kept, in characters.
const MAX_ERROR_CHARS: usize = 300;

/// One type a plugin provides: its docs and compiled schema.
struct PluginType {
    plugin: Arc<Plugin>,
    kind: Kind,
    /// The type name, kept for the life of the process: sources and destinations carry it.
    name: &'static str,
    doc: TypeDoc,
    schema: Option<jsonschema::Validator>,
    mappings: Arc<EventMappings>,
}

impl PluginType {
    fn new(
        plugin: Arc<Plugin>,
        kind: Kind,
        info: &TypeInfo,
        mappings: &Arc<EventMappings>,
    ) -> Result<PluginType, PluginError> {
        let invalid = |reason: String| PluginError::Unavailable {
            plugin: plugin.name().to_string(),
            reason: format!("type {:?}: {reason}", info.name),
        };
        if info.name.is_empty() || info.name.len() > 63 {
            return Err(invalid("a type name must have 1 to 63 characters".into()));
        }
        let schema_value: Option<Value> = match info.properties_schema.trim() {
            "" => None,
            text => {
                Some(serde_json::from_str(text).map_err(|e| invalid(format!("propertiesSchema is not JSON: {e}")))?)
            }
        };
        let schema = schema_value
            .as_ref()
            .map(|schema| jsonschema::validator_for(schema).map_err(|e| invalid(format!("propertiesSchema: {e}"))))
            .transpose()?;
        // Its properties are documented by its schema, when it gives one.
        let mut doc = match schema_value {
            Some(schema) => TypeDoc::from_schema(&info.name, &[], &info.example, schema),
            None => TypeDoc {
                name: info.name.clone(),
                aliases: Vec::new(),
                summary: String::new(),
                properties: Vec::new(),
                example: info.example.clone(),
                schema: None,
            },
        };
        doc.summary = format!("{} (plugin {})", info.description, plugin.name());
        // A plugin's types are described once at start-up, so keeping the name for the life of
        // the process is what its sources and destinations need anyway.
        let name: &'static str = Box::leak(info.name.clone().into_boxed_str());
        Ok(PluginType { plugin, kind, name, doc, schema, mappings: mappings.clone() })
    }

    /// Checks `properties` against the schema, then asks the plugin; errors name the property
    /// (the first one at fault, when there are several).
    fn check(&self, properties: &Value, context: &BuildContext) -> Result<(), PropertyError> {
        let empty = Value::Object(Default::default());
        let properties = if properties.is_null() { &empty } else { properties };
        if let Some(schema) = &self.schema {
            let errors: Vec<PropertyError> = schema
                .iter_errors(properties)
                .take(MAX_SCHEMA_ERRORS)
                .map(|e| {
                    let path = e.instance_path().to_string().trim_start_matches('/').replace('/', ".");
                    PropertyError::new(path, cut(&e.to_string()))
                })
                .collect();
            if let Some(first) = errors.first() {
                let others: Vec<String> = errors[1..].iter().map(ToString::to_string).collect();
                let also = if others.is_empty() { String::new() } else { format!("; {}", others.join("; ")) };
                let message = format!(
                    "{}{also} (schema of type {:?} from plugin {:?})",
                    first.message,
                    self.name,
                    self.plugin.name()
                );
                return Err(PropertyError::new(first.path.clone(), message));
            }
        }
        let errors = self.remote_check(properties, context);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PropertyError::whole(format!("{} (plugin {:?})", errors.join("; "), self.plugin.name())))
        }
    }

    /// The plugin's own Validate answer. Loading happens in synchronous code, so the call blocks
    /// this thread (never longer than the call timeout); it is skipped where blocking is not
    /// allowed (a single-threaded runtime) and while the plugin is down, whose sources and
    /// deliveries then fail visibly on their own.
    fn remote_check(&self, properties: &Value, context: &BuildContext) -> Vec<String> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Vec::new();
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Vec::new();
        }
        let Ok(mut client) = self.plugin.client() else {
            return Vec::new();
        };
        let request = ValidateRequest {
            kind: self.kind as i32,
            r#type: self.name.to_string(),
            properties_json: properties.to_string(),
            trigger: Some(trigger(context)),
        };
        let limit = self.plugin.timeouts().call;
        let answer = tokio::task::block_in_place(|| {
            handle.block_on(async { tokio::time::timeout(limit, client.validate(request)).await })
        });
        match answer {
            Ok(Ok(response)) => response.into_inner().errors.iter().take(MAX_SCHEMA_ERRORS).map(|e| cut(e)).collect(),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Vec::new(),
            Ok(Err(status)) => vec![format!("Validate failed: {}", cut(status.message()))],
            Err(_) => vec![format!("Validate did not answer within {limit:?}")],
        }
    }
}

/// The trigger of a build context, as the protocol names it.
pub(crate) fn trigger(context: &BuildContext) -> Trigger {
    Trigger {
        namespace: context.trigger.namespace.clone(),
        service: context.trigger.service.clone(),
        name: context.trigger.trigger.clone(),
    }
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters.
pub(crate) fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

struct SourceType(PluginType);

impl SourceFactory for SourceType {
    fn doc(&self) -> &TypeDoc {
        &self.0.doc
    }

    fn build(&self, properties: &Value, context: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        self.0.check(properties, context)?;
        let source = PluginSource::new(self.0.plugin.clone(), self.0.name, properties, context);
        Ok(Arc::new(source.with_mappings(self.0.mappings.clone())))
    }
}

struct DestinationType(PluginType);

impl DestinationFactory for DestinationType {
    fn doc(&self) -> &TypeDoc {
        &self.0.doc
    }

    fn build(&self, properties: &Value, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        self.0.check(properties, context)?;
        Ok(Arc::new(PluginDestination::new(self.0.plugin.clone(), self.0.name, properties)))
    }
}

/// Adds every type the manager's plugins provide to `registry`, removes the built-in sources the
/// plugins file disables, and records why plugins that failed are missing. Events of plugin
/// sources get the severity and tags `mappings` give their source and event type. Returns
/// problems worth reporting: a type that clashes with another or describes itself badly is left
/// out.
pub fn register(registry: &mut Registry, manager: &PluginManager, mappings: &Arc<EventMappings>) -> Vec<String> {
    let mut problems = Vec::new();
    for name in manager.disabled_sources() {
        if registry.remove_source(name) {
            registry.add_missing(format!("source type {name:?} is in disabledSources of the plugins file"));
        } else {
            problems.push(format!("disabledSources: no source type {name:?} to disable"));
        }
    }
    for started in manager.started() {
        let plugin = &started.plugin;
        for info in &started.types.sources {
            if registry.source(&info.name).is_some() {
                problems.push(format!(
                    "plugin {:?}: source type {:?} already exists; left out",
                    plugin.name(),
                    info.name
                ));
                continue;
            }
            match PluginType::new(plugin.clone(), Kind::Source, info, mappings) {
                Ok(t) => registry.add_source(Arc::new(SourceType(t))),
                Err(e) => problems.push(e.to_string()),
            }
        }
        for info in &started.types.destinations {
            if registry.destination(&info.name).is_some() {
                problems.push(format!(
                    "plugin {:?}: destination type {:?} already exists; left out",
                    plugin.name(),
                    info.name
                ));
                continue;
            }
            match PluginType::new(plugin.clone(), Kind::Destination, info, mappings) {
                Ok(t) => registry.add_destination(Arc::new(DestinationType(t))),
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    for error in manager.failed() {
        registry.add_missing(error.to_string());
    }
    problems
}
