//! The lists replays and catch-ups make of a watch's objects: page by page, each item parsed into
//! JSON when it is handled, so that a page in hand is its items' text and one parsed object
//! rather than every object parsed at once (and no typed metadata is made only to become JSON
//! again).

use kube::Client;
use kube::api::ListParams;
use kube::core::ListMeta;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::task::WatchTask;

/// Objects per page of every list of a watch: the watcher's own (its first list and re-lists),
/// catch-ups and replays. A page is held parsed while its objects are handed out, and the HTTP
/// connection's read buffer grows to the largest page it received and keeps that size: with
/// pages of 500, 1,000 triggers over 10,000 objects of 5 kinds stayed 1.7 MiB larger after their
/// first start, and peaked 2-3 MiB higher before the watches synced.
pub(super) const LIST_PAGE: u32 = 100;

/// A page as the API server sends it, its items left unparsed.
#[derive(Deserialize)]
struct PageBody {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Box<RawValue>>,
}

/// One page of a list: its items unparsed until taken.
pub(super) struct ListPage {
    items: Vec<Box<RawValue>>,
    api_version: String,
    kind: String,
}

impl ListPage {
    /// The page's objects, each parsed when taken and given the apiVersion and kind list items
    /// lack; an item that is not a JSON object is an error.
    pub(super) fn objects(&self) -> impl Iterator<Item = Result<Value, String>> + '_ {
        self.items.iter().map(|item| {
            let parsed = serde_json::from_str(item.get()).map_err(|e| format!("unexpected object in a list: {e}"))?;
            let Value::Object(mut map) = parsed else {
                return Err("unexpected item in a list: not a JSON object".to_owned());
            };
            map.entry("apiVersion").or_insert_with(|| Value::String(self.api_version.clone()));
            map.entry("kind").or_insert_with(|| Value::String(self.kind.clone()));
            Ok(Value::Object(map))
        })
    }
}

impl WatchTask {
    /// Parameters listing what the watch watches.
    pub(super) fn list_params(&self) -> ListParams {
        let mut params = ListParams::default().limit(LIST_PAGE);
        if !self.key.fields.is_empty() {
            params = params.fields(&self.key.fields);
        }
        params
    }

    /// The next page of the list `cursor` stands at, which then moves past it (to `None` after
    /// the last page); `None` once the list is done. An error says why a page could not be had.
    pub(super) async fn next_page(&self, cursor: &mut Option<ListParams>) -> Result<Option<ListPage>, String> {
        let Some(params) = cursor.as_mut() else { return Ok(None) };
        let mut request = kube::core::Request::new(self.api.resource_url())
            .list(params)
            .map_err(|e| kube::Error::BuildRequest(e).to_string())?;
        request.extensions_mut().insert("list");
        let text = Client::from(self.api.clone()).request_text(request).await.map_err(|e| e.to_string())?;
        let body: PageBody = serde_json::from_str(&text).map_err(|e| format!("unexpected list response: {e}"))?;
        match body.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => *cursor = None,
        }
        Ok(Some(ListPage {
            items: body.items,
            api_version: self.key.resource.api_version.clone(),
            kind: self.key.resource.kind.clone(),
        }))
    }
}
