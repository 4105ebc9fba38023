//! Source and destination types defined by one properties struct: the struct's `Deserialize`
//! reads the properties, its `JsonSchema` (doc comments included) documents them, and the
//! adapters here turn such a type into the factory the registry holds.
//!
//! A new type is one file implementing [`SourceType`] or [`DestinationType`] and one
//! registration line ([`Registry::add_source_type`], [`Registry::add_destination_type`]).

use std::sync::Arc;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::properties::{PropertyError, parse_properties};
use crate::registry::{BuildContext, Destination, DestinationFactory, Registry, Source, SourceFactory, TypeDoc};

/// A source type whose properties are one struct.
pub trait SourceType: Send + Sync + 'static {
    /// The properties; its doc comment is the type's summary, its fields' doc comments the
    /// documentation of each property.
    type Properties: DeserializeOwned + JsonSchema;
    /// Type name as written in `type:`.
    const NAME: &'static str;
    /// Other names accepted for compatibility (e.g. kube-trigger's `cronjob`).
    const ALIASES: &'static [&'static str] = &[];
    /// A YAML example of the `source:` entry.
    const EXAMPLE: &'static str;
    /// Builds a source from read properties; errors name the property at fault.
    fn build(&self, properties: Self::Properties, context: &BuildContext) -> Result<Arc<dyn Source>, PropertyError>;
}

/// A destination type whose properties are one struct.
pub trait DestinationType: Send + Sync + 'static {
    /// The properties; its doc comment is the type's summary, its fields' doc comments the
    /// documentation of each property.
    type Properties: DeserializeOwned + JsonSchema;
    /// Type name as written in `type:`.
    const NAME: &'static str;
    /// Other names accepted for compatibility (e.g. kube-trigger's `task`).
    const ALIASES: &'static [&'static str] = &[];
    /// A YAML example of the destination entry.
    const EXAMPLE: &'static str;
    /// Builds a destination from read properties (templates included); errors name the property.
    fn build(
        &self,
        properties: Self::Properties,
        context: &BuildContext,
    ) -> Result<Arc<dyn Destination>, PropertyError>;
}

/// The factory of a [`SourceType`]: reads the properties, then builds.
pub struct TypedSource<T> {
    kind: T,
    doc: TypeDoc,
}

impl<T: SourceType> TypedSource<T> {
    /// The factory of `kind`, its documentation generated from its properties struct.
    pub fn new(kind: T) -> Self {
        let doc = TypeDoc::from_schema(T::NAME, T::ALIASES, T::EXAMPLE, properties_schema::<T::Properties>());
        TypedSource { kind, doc }
    }
}

impl<T: SourceType> SourceFactory for TypedSource<T> {
    fn doc(&self) -> &TypeDoc {
        &self.doc
    }

    fn build(&self, properties: &Value, context: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        self.kind.build(parse_properties(properties)?, context)
    }
}

/// The factory of a [`DestinationType`]: reads the properties, then builds.
pub struct TypedDestination<T> {
    kind: T,
    doc: TypeDoc,
}

impl<T: DestinationType> TypedDestination<T> {
    /// The factory of `kind`, its documentation generated from its properties struct.
    pub fn new(kind: T) -> Self {
        let doc = TypeDoc::from_schema(T::NAME, T::ALIASES, T::EXAMPLE, properties_schema::<T::Properties>());
        TypedDestination { kind, doc }
    }
}

impl<T: DestinationType> DestinationFactory for TypedDestination<T> {
    fn doc(&self) -> &TypeDoc {
        &self.doc
    }

    fn build(&self, properties: &Value, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        self.kind.build(parse_properties(properties)?, context)
    }
}

impl Registry {
    /// Adds a source type defined by its properties struct.
    pub fn add_source_type<T: SourceType>(&mut self, kind: T) {
        self.add_source(Arc::new(TypedSource::new(kind)));
    }

    /// Adds a destination type defined by its properties struct.
    pub fn add_destination_type<T: DestinationType>(&mut self, kind: T) {
        self.add_destination(Arc::new(TypedDestination::new(kind)));
    }
}

/// The JSON Schema (draft 7) of `P`, self-contained: nested types are written in place, so the
/// schema can be copied into the schema of a whole file.
pub fn properties_schema<P: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft07()
        .with(|settings| {
            settings.inline_subschemas = true;
            settings.meta_schema = None;
        })
        .into_generator();
    let schema: Schema = generator.into_root_schema_for::<P>();
    let mut value = schema.to_value();
    if let Some(object) = value.as_object_mut() {
        // The struct's Rust name says nothing to a user writing YAML.
        object.remove("title");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TriggerId;
    use serde::Deserialize;
    use serde_json::json;

    /// Says hello.
    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct HelloProperties {
        /// Whom to greet,
        /// on one line.
        greeted_name: String,
        /// How often; default 1.
        #[serde(default)]
        times: Option<u32>,
    }

    struct Hello;

    impl DestinationType for Hello {
        type Properties = HelloProperties;
        const NAME: &'static str = "hello";
        const ALIASES: &'static [&'static str] = &["hi"];
        const EXAMPLE: &'static str = "type: hello\nproperties: {greetedName: you}\n";

        fn build(&self, _: HelloProperties, _: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
            Err(PropertyError::new("greetedName", "built"))
        }
    }

    #[test]
    fn the_doc_comes_from_the_properties_struct() {
        let mut registry = Registry::default();
        registry.add_destination_type(Hello);
        let doc = registry.destination("hi").unwrap().doc();
        assert_eq!((doc.name.as_str(), doc.summary.as_str()), ("hello", "Says hello."));
        let properties: Vec<(&str, bool, &str)> =
            doc.properties.iter().map(|p| (p.name.as_str(), p.required, p.description.as_str())).collect();
        assert_eq!(
            properties,
            [("greetedName", true, "Whom to greet, on one line."), ("times", false, "How often; default 1.")]
        );
        assert_eq!(doc.schema.as_ref().unwrap()["additionalProperties"], json!(false));
    }

    #[test]
    fn property_errors_carry_the_path() {
        let mut registry = Registry::default();
        registry.add_destination_type(Hello);
        let factory = registry.destination("hello").unwrap();
        let context =
            BuildContext::new(TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: "t".into() });
        let error = factory.build(&json!({"greetedName": "x", "times": "twice"}), &context).err().unwrap();
        assert_eq!(error.path, "times");
        assert!(error.message.starts_with("invalid type: string \"twice\""), "{error}");
        let error = factory.build(&json!({"greetedName": "x"}), &context).err().unwrap();
        assert_eq!(error.to_string(), "properties.greetedName: built");
    }
}
