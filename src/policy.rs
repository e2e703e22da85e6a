//! Per-api policies, checked after authentication: the largest request body,
//! the methods allowed, paths no caller may reach, and the scopes a key
//! must hold. Each refusal names the policy and the limit it hit.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorCode};

/// An api's policies; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Largest request body in bytes (413 above; 411 for a body of unknown length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Methods the api accepts (405 for others); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_methods: Vec<String>,
    /// Path patterns refused with 403: a path prefix whose segments may be
    /// `*` (any one segment), e.g. `/docs/*/internal`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbidden_paths: Vec<ForbiddenPath>,
    /// Scopes the key must all hold (403 `insufficient_scope` otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
}

/// A forbidden path: the pattern as written (stored, shown, named in
/// events) and, beside it, its segments as an upstream decodes them —
/// decoded once, as the policies are read or built, not per call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct ForbiddenPath {
    pattern: String,
    segments: Box<[Segment]>,
}

/// One segment of a forbidden path (the trailing `/` left out).
#[derive(Debug, Clone)]
struct Segment {
    written: Box<str>,
    /// The segment with its escapes decoded (an invalid one kept as
    /// written; `a%20b`, `r%C3%A9sum%C3%A9`: a space or a non-ASCII letter
    /// can only be written so), when that differs from `written`.
    decoded: Option<Box<[u8]>>,
}

impl From<String> for ForbiddenPath {
    fn from(pattern: String) -> ForbiddenPath {
        let segments = pattern
            .trim_end_matches('/')
            .split('/')
            .map(|written| Segment {
                written: written.into(),
                decoded: written
                    .contains('%')
                    .then(|| crate::protection::percent_decode_bytes(written, false, true))
                    .flatten()
                    .filter(|decoded| decoded != written.as_bytes())
                    .map(Vec::into_boxed_slice),
            })
            .collect();
        ForbiddenPath { pattern, segments }
    }
}

impl From<&str> for ForbiddenPath {
    fn from(pattern: &str) -> ForbiddenPath {
        ForbiddenPath::from(pattern.to_string())
    }
}

impl From<ForbiddenPath> for String {
    fn from(path: ForbiddenPath) -> String {
        path.pattern
    }
}

/// Two patterns are the same when written the same.
impl PartialEq for ForbiddenPath {
    fn eq(&self, other: &ForbiddenPath) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for ForbiddenPath {}

impl ForbiddenPath {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether a segment is `.` or `..`, as written or decoded (`%2e%2e`):
    /// a path as an upstream resolves it holds none, so such a pattern
    /// would match no call's resolved path (`/docs/./admin` never refuses
    /// `/docs/admin`).
    fn has_dot_segment(&self) -> bool {
        self.segments.iter().any(|s| matches!(&*s.written, "." | "..") || s.decoded.as_deref().is_some_and(|d| d == b"." || d == b".."))
    }

    /// Whether `path` is under the pattern, segment by segment, as sent;
    /// a `*` segment matches any one segment.
    pub fn matches(&self, path: &str) -> bool {
        self.segments_match(path, |got, want| got == &*want.written)
    }

    /// Whether `resolved` (a path as an upstream resolves it:
    /// percent-decoded) is under the pattern, letter case ignored, each
    /// segment as written or as an upstream decodes it.
    fn matches_resolved(&self, resolved: &str) -> bool {
        self.segments_match(resolved, Segment::same_resolved)
    }

    /// Compares segment by segment with `same`.
    fn segments_match(&self, path: &str, same: impl Fn(&str, &Segment) -> bool) -> bool {
        let mut path_segments = path.split('/');
        for want in self.segments.iter() {
            match path_segments.next() {
                Some(got) if &*want.written == "*" && !got.is_empty() => {}
                Some(got) if same(got, want) => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether some path under `prefix` (an api's) can match the pattern:
    /// each of the prefix's segments is the pattern's, or the pattern's is
    /// `*` (or the pattern ends first: `/` or `/*` covers every api).
    fn under(&self, prefix: &str) -> bool {
        let mut pattern_segments = self.segments.iter();
        for segment in prefix.trim_end_matches('/').split('/') {
            match pattern_segments.next() {
                None => return true,
                Some(want) if &*want.written == "*" && !segment.is_empty() => {}
                Some(want) if Segment::same_resolved(segment, want) => {}
                Some(_) => return false,
            }
        }
        true
    }
}

impl Segment {
    /// Whether a segment of a resolved (percent-decoded) path is this one,
    /// letter case ignored: as written, or as an upstream decodes it.
    fn same_resolved(got: &str, want: &Segment) -> bool {
        got.eq_ignore_ascii_case(&want.written) || want.decoded.as_deref().is_some_and(|d| got.as_bytes().eq_ignore_ascii_case(d))
    }
}

/// A refused call: the status code, the policy's name and what it allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub code: ErrorCode,
    pub policy: &'static str,
    /// The part of the request that was wrong: `method`, `path`, `scopes` or `body`.
    pub field: &'static str,
    pub limit: Value,
    pub actual: Value,
}

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

impl Policies {
    /// Checks and normalises what an admin sent.
    pub fn validated(mut self) -> Result<Policies, ApiError> {
        if self.max_body_bytes == Some(0) {
            return Err(ApiError::invalid_body("`policies.max_body_bytes` must be at least 1"));
        }
        for method in &mut self.allowed_methods {
            *method = method.to_ascii_uppercase();
            if !METHODS.contains(&method.as_str()) {
                return Err(ApiError::invalid_body(format!(
                    "`policies.allowed_methods` holds `{method}`; use HTTP methods such as GET, POST, PUT, PATCH, DELETE"
                )));
            }
        }
        self.allowed_methods.sort();
        self.allowed_methods.dedup();
        if self.forbidden_paths.len() > 1000 || self.required_scopes.len() > 100 || self.allowed_methods.len() > METHODS.len() {
            return Err(ApiError::invalid_body("`policies` holds too many entries (at most 1000 paths and 100 scopes)"));
        }
        for path in &self.forbidden_paths {
            let pattern = path.as_str();
            let ok = pattern.starts_with('/')
                && pattern.len() <= 256
                && !pattern.contains("//")
                && !pattern.chars().any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
                && !path.has_dot_segment()
                && !crate::redact::holds_secret(pattern);
            if !ok {
                return Err(ApiError::invalid_body(format!(
                    "`policies.forbidden_paths` entry `{pattern}` must be a path starting with `/`, without spaces, query, `//`, `.` or `..` segments or a key"
                )));
            }
        }
        for scope in &self.required_scopes {
            if !crate::keys::is_valid_scope(scope) {
                return Err(ApiError::invalid_body("each of `policies.required_scopes` must be 1-100 characters of letters, digits and `-_:.*/`, and no key or token"));
            }
        }
        Ok(self)
    }

    /// Refuses forbidden paths outside the api's prefix: the api never
    /// serves such a path, so the entry would be kept and never apply (an
    /// entry meant relative to the prefix, `/admin` for `/docs/admin`).
    pub fn check_under(&self, prefix: &str) -> Result<(), ApiError> {
        match self.forbidden_paths.iter().find(|p| !p.under(prefix)) {
            Some(pattern) => Err(ApiError::invalid_body(format!(
                "`policies.forbidden_paths` entry `{}` is not under the api's prefix `{prefix}`, so no call to the api would ever match it; write the whole path, e.g. `{}/admin`",
                pattern.as_str(),
                prefix.trim_end_matches('/')
            ))),
            None => Ok(()),
        }
    }

    /// Checks a call. `body_length` is the declared length (`None`: unknown,
    /// i.e. chunked), `has_body` whether the call sends a body at all.
    pub fn check(&self, method: &str, path: &str, body_length: Option<u64>, has_body: bool, scopes: &[String]) -> Result<(), Violation> {
        if !self.allowed_methods.is_empty() && !self.allowed_methods.iter().any(|m| m == method) {
            return Err(Violation {
                code: ErrorCode::MethodNotAllowed,
                policy: "allowed_methods",
                field: "method",
                limit: json!(self.allowed_methods),
                actual: json!(method),
            });
        }
        // Matched as sent and as an upstream may read it: `/docs//admin`,
        // `/docs/./admin`, `/docs/%61dmin`, `/docs/admin;x` and (to the many
        // that route without regard to case) `/docs/ADMIN` are `/docs/admin`.
        let normalized = if self.forbidden_paths.is_empty() { None } else { normalized_path(path) };
        let resolved = normalized.as_deref().unwrap_or(path);
        if let Some(pattern) = self.forbidden_paths.iter().find(|p| p.matches(path) || p.matches_resolved(resolved)) {
            return Err(Violation { code: ErrorCode::Forbidden, policy: "forbidden_paths", field: "path", limit: json!(pattern.as_str()), actual: json!(path) });
        }
        self.check_scopes(scopes)?;
        if let Some(max) = self.max_body_bytes {
            match body_length {
                Some(n) if n > max => {
                    return Err(Violation { code: ErrorCode::PayloadTooLarge, policy: "max_body_bytes", field: "body", limit: json!(max), actual: json!(n) })
                }
                None if has_body => {
                    return Err(Violation {
                        code: ErrorCode::LengthRequired,
                        policy: "max_body_bytes",
                        field: "body",
                        limit: json!(max),
                        actual: Value::Null,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks only the scopes a key must hold (what key verification asks).
    pub fn check_scopes(&self, scopes: &[String]) -> Result<(), Violation> {
        if self.required_scopes.iter().any(|s| !scopes.contains(s)) {
            return Err(Violation {
                code: ErrorCode::InsufficientScope,
                policy: "required_scopes",
                field: "scopes",
                limit: json!(self.required_scopes),
                actual: json!(scopes),
            });
        }
        Ok(())
    }
}

/// `path` as an upstream may read it, when that differs from how it was
/// sent: each segment's parameters (`;jsessionid=…`, dropped by Tomcat,
/// Jetty and Spring) left out, percent-decoded (twice at most; an invalid
/// escape is left as is), empty and `.` segments dropped, `..` segments
/// resolved. (Letter case is the matcher's: compare it ignoring case.)
pub fn normalized_path(path: &str) -> Option<String> {
    if !(path.contains('%') || path.contains("//") || path.contains("/.") || path.contains(';')) {
        return None;
    }
    let bare = match path.contains(';') {
        true => std::borrow::Cow::Owned(path.split('/').map(|s| s.split(';').next().unwrap_or(s)).collect::<Vec<_>>().join("/")),
        false => std::borrow::Cow::Borrowed(path),
    };
    let decoded = crate::protection::decoded(&bare, false).unwrap_or(std::borrow::Cow::Borrowed(&bare));
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Policies {
        Policies {
            max_body_bytes: Some(100),
            allowed_methods: vec!["get".into(), "POST".into()],
            forbidden_paths: vec!["/docs/admin".into(), "/docs/*/internal".into()],
            required_scopes: vec!["docs:read".into()],
        }
        .validated()
        .unwrap()
    }

    #[test]
    fn patterns_match_by_segment() {
        let pattern_matches = |pattern: &str, path: &str| ForbiddenPath::from(pattern).matches(path);
        assert!(pattern_matches("/docs/admin", "/docs/admin"));
        assert!(pattern_matches("/docs/admin", "/docs/admin/users"));
        assert!(!pattern_matches("/docs/admin", "/docs/administrator"));
        assert!(pattern_matches("/docs/*/internal", "/docs/v2/internal/x"));
        assert!(!pattern_matches("/docs/*/internal", "/docs//internal"));
        assert!(!pattern_matches("/docs/*/internal", "/docs/v2"));
    }

    /// A pattern is decoded once, as it is read: it keeps its written form
    /// (stored and shown as given) and only a segment that escapes change
    /// carries a decoded one.
    #[test]
    fn a_pattern_keeps_its_written_form_and_decodes_once() {
        let policies: Policies = serde_json::from_value(json!({"forbidden_paths": ["/docs/a%20b/", "/docs/admin", "/docs/%zz"]})).unwrap();
        assert_eq!(serde_json::to_value(&policies).unwrap(), json!({"forbidden_paths": ["/docs/a%20b/", "/docs/admin", "/docs/%zz"]}));
        let decoded: Vec<Vec<Option<&[u8]>>> =
            policies.forbidden_paths.iter().map(|p| p.segments.iter().map(|s| s.decoded.as_deref()).collect()).collect();
        assert_eq!(decoded, vec![vec![None, None, Some(&b"a b"[..])], vec![None, None, None], vec![None, None, None]]);
        assert_eq!(policies.forbidden_paths[0], ForbiddenPath::from("/docs/a%20b/"));
    }

    #[test]
    fn forbidden_paths_hold_for_every_spelling_an_upstream_may_resolve() {
        let p = policies();
        let scopes = vec!["docs:read".to_string()];
        for path in ["/docs/admin", "/docs//admin", "/docs/./admin", "/docs/%61dmin", "/docs/%2561dmin", "/docs/x/../admin/users", "//docs/admin", "/docs/v1/.//internal", "/docs%2fadmin", "/docs/ADMIN", "/docs/Admin/x", "/docs/admin;a=b", "/docs/V1/Internal"] {
            let v = p.check("GET", path, None, false, &scopes).unwrap_err();
            assert_eq!((v.code, v.actual), (ErrorCode::Forbidden, json!(path)), "{path}");
        }
        for path in ["/docs/administrator", "/docs/a%20dmin", "/docs/%zzadmin", "/docs/admin%", "/docs/v1/internals"] {
            assert!(p.check("GET", path, None, false, &scopes).is_ok(), "{path}");
        }
        assert_eq!(normalized_path("/docs/a"), None, "nothing to resolve: no copy");
        assert_eq!(normalized_path("/a/%2e%2e/../b/./c//").as_deref(), Some("/b/c"));
    }

    #[test]
    fn a_pattern_written_with_escapes_holds_for_every_spelling_of_its_path() {
        // Spaces and non-ASCII letters can only be written escaped; an
        // upstream decodes every spelling of them to the same path.
        let p = Policies { forbidden_paths: vec!["/docs/a%20b".into(), "/docs/r%C3%A9sum%C3%A9".into(), "/docs/%41pi".into()], ..Policies::default() }
            .validated()
            .unwrap();
        for path in ["/docs/a%20b", "/docs/a%20b;x", "/docs/%61%20b", "/docs//a%20b/c", "/docs/A%20B", "/docs/r%C3%A9sum%C3%A9", "/docs/r%c3%a9sum%c3%a9", "/docs/R%C3%A9SUM%C3%A9/x", "/docs/api", "/docs/%41pi", "/docs/API/x", "/docs/%2541pi"] {
            let v = p.check("GET", path, None, false, &[]).unwrap_err();
            assert_eq!((v.code, v.actual), (ErrorCode::Forbidden, json!(path)), "{path}");
        }
        for path in ["/docs/a%20bc", "/docs/ab", "/docs/a", "/docs/resume", "/docs/apis", "/docs/a%2"] {
            assert!(p.check("GET", path, None, false, &[]).is_ok(), "{path}");
        }
    }

    #[test]
    fn each_policy_names_itself_and_its_limit() {
        let p = policies();
        let scopes = vec!["docs:read".to_string()];
        assert!(p.check("GET", "/docs/a", None, false, &scopes).is_ok());
        let v = p.check("DELETE", "/docs/a", None, false, &scopes).unwrap_err();
        assert_eq!((v.code, v.policy), (ErrorCode::MethodNotAllowed, "allowed_methods"));
        assert_eq!(v.limit, json!(["GET", "POST"]));
        let v = p.check("GET", "/docs/v1/internal", None, false, &scopes).unwrap_err();
        assert_eq!((v.code, v.limit), (ErrorCode::Forbidden, json!("/docs/*/internal")));
        let v = p.check("GET", "/docs/a", None, false, &[]).unwrap_err();
        assert_eq!(v.code, ErrorCode::InsufficientScope);
        let v = p.check("POST", "/docs/a", Some(101), true, &scopes).unwrap_err();
        assert_eq!((v.code, v.limit, v.actual), (ErrorCode::PayloadTooLarge, json!(100), json!(101)));
        assert!(p.check("POST", "/docs/a", Some(100), true, &scopes).is_ok());
        assert_eq!(p.check("POST", "/docs/a", None, true, &scopes).unwrap_err().code, ErrorCode::LengthRequired);
    }

    #[test]
    fn forbidden_paths_must_lie_under_the_apis_prefix() {
        let with = |path: &str| Policies { forbidden_paths: vec![path.into()], ..Policies::default() };
        for (prefix, path) in [("/docs", "/docs"), ("/docs", "/docs/admin"), ("/docs", "/*/admin"), ("/docs", "/DOCS/x"), ("/docs/v1", "/docs/*/x"), ("/", "/admin"), ("/docs", "/d%6Fcs"), ("/docs", "/")] {
            assert!(with(path).check_under(prefix).is_ok(), "{path} under {prefix}");
        }
        for (prefix, path) in [("/docs", "/admin"), ("/docs", "/docsearch"), ("/docs/v1", "/docs/v2/x"), ("/docs/v1", "/docs/V1x")] {
            assert!(with(path).check_under(prefix).is_err(), "{path} not under {prefix}");
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            Policies { max_body_bytes: Some(0), ..Policies::default() },
            Policies { allowed_methods: vec!["FETCH".into()], ..Policies::default() },
            Policies { forbidden_paths: vec!["admin".into()], ..Policies::default() },
            Policies { forbidden_paths: vec!["/a b".into()], ..Policies::default() },
            Policies { required_scopes: vec!["".into()], ..Policies::default() },
        ] {
            assert!(bad.clone().validated().is_err(), "{bad:?}");
        }
    }
}
