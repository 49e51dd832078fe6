//! Query and form parameters as WeChat reads them, shared by the pages, the `sns` endpoints and
//! the `/sim` control API; it depends on nothing else in the simulator.

/// Query or form parameters in their order of arrival; lenient like WeChat: it never fails,
/// and an empty value counts as missing.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` bytes (a query or a form body).
    pub(super) fn parse(raw: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(raw).into_owned().collect())
    }

    /// The value of the first `key`; `None` when it is absent or empty.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// The value of `key`, or WeChat's errcode `missing` for its absence.
    pub(super) fn require(&self, key: &str, missing: i64) -> Result<&str, i64> {
        self.get(key).ok_or(missing)
    }
}
