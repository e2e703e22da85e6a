//! The OpenAPI document the admin server serves (`src/admin/openapi.json`,
//! written by hand): served without a token, one operation for every rule
//! of the access table with its permission and nothing else, path
//! parameters and references that resolve, request examples that fit their
//! schemas, and every route called with the document's examples and
//! answered with the documented status and shape.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{json, Value};

use keytrail::access::ROUTES;
use keytrail::error::ErrorCode;

use crate::util::{Admin, Answer, TestServer};

/// The document as the crate holds it; the server must answer exactly this.
const DOCUMENT: &str = include_str!("../../src/admin/openapi.json");

/// The operations outside the access table: no token needed.
const PUBLIC: [(&str, &str); 3] = [("GET", "/healthz"), ("POST", "/v1/auth/login"), ("GET", "/openapi.json")];

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("src/admin/openapi.json is JSON")
}

/// Every operation: (METHOD, route, operation).
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (route, item) in doc["paths"].as_object().expect("paths") {
        for (key, op) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&key.as_str()) {
                out.push((key.to_uppercase(), route.clone(), op));
            }
        }
    }
    out
}

fn operation<'d>(doc: &'d Value, method: &str, route: &str) -> &'d Value {
    let op = &doc["paths"][route][method.to_lowercase()];
    assert!(op.is_object(), "{method} {route} is not in the document");
    op
}

/// Follows `$ref`s (local ones, as the document uses) to what they name.
fn resolve<'d>(doc: &'d Value, mut value: &'d Value) -> &'d Value {
    while let Some(target) = value.get("$ref").and_then(Value::as_str) {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("`{target}` is not a local reference"));
        value = doc.pointer(pointer).unwrap_or_else(|| panic!("`{target}` resolves to nothing"));
    }
    value
}

fn route_params(route: &str) -> Vec<&str> {
    route.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect()
}

/// The parameters of an operation, those of its path item included.
fn parameters<'d>(doc: &'d Value, route: &str, op: &'d Value) -> Vec<&'d Value> {
    let shared = doc["paths"][route]["parameters"].as_array().into_iter().flatten();
    let own = op["parameters"].as_array().into_iter().flatten();
    shared.chain(own).map(|p| resolve(doc, p)).collect()
}

// --- a small JSON Schema checker: the keywords the document uses ---

/// Checks `value` against `schema`. `strict` also refuses object members
/// a closed-looking schema does not name (unless it says
/// `additionalProperties`), so a field added to an answer without the
/// document is caught.
struct Checker<'d> {
    doc: &'d Value,
    strict: bool,
}

impl<'d> Checker<'d> {
    fn check(&self, schema: &'d Value, value: &Value, at: &str) -> Result<(), String> {
        self.check_level(schema, value, at, true)
    }

    /// Gathers the member names a schema allows, across `$ref` and `allOf`;
    /// false when it is open (it says `additionalProperties`, or branches).
    fn known_members(&self, schema: &'d Value, names: &mut HashSet<String>) -> bool {
        let schema = resolve(self.doc, schema);
        if schema.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false)) || schema.get("anyOf").is_some() || schema.get("oneOf").is_some() {
            return false;
        }
        names.extend(schema["properties"].as_object().into_iter().flat_map(|p| p.keys().cloned()));
        schema["allOf"].as_array().into_iter().flatten().all(|branch| self.known_members(branch, names))
    }

    fn check_level(&self, schema: &'d Value, value: &Value, at: &str, whole: bool) -> Result<(), String> {
        if schema.get("$ref").is_some() {
            self.check_level(resolve(self.doc, schema), value, at, false)?;
        }
        if self.strict && whole {
            if let Some(members) = value.as_object() {
                let mut names = HashSet::new();
                if self.known_members(schema, &mut names) && !names.is_empty() {
                    if let Some(extra) = members.keys().find(|k| !names.contains(*k)) {
                        return Err(format!("{at}: `{extra}` is not in the schema"));
                    }
                }
            }
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => return Err(format!("{at}: bad `type` {other}")),
            };
            let fits = |t: &str| match t {
                "null" => value.is_null(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "number" => value.is_number(),
                "integer" => value.is_i64() || value.is_u64(),
                _ => false,
            };
            if !types.iter().any(|t| fits(t)) {
                return Err(format!("{at}: {value} is not of type {types:?}"));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                return Err(format!("{at}: {value} is not one of {}", Value::Array(allowed.clone())));
            }
        }
        if let Some(constant) = schema.get("const") {
            if constant != value {
                return Err(format!("{at}: {value} is not {constant}"));
            }
        }
        if let Some(n) = value.as_f64() {
            if schema.get("minimum").and_then(Value::as_f64).is_some_and(|min| n < min) || schema.get("maximum").and_then(Value::as_f64).is_some_and(|max| n > max) {
                return Err(format!("{at}: {value} is out of range"));
            }
        }
        if let Some(text) = value.as_str() {
            let n = text.chars().count() as u64;
            if schema.get("minLength").and_then(Value::as_u64).is_some_and(|min| n < min) || schema.get("maxLength").and_then(Value::as_u64).is_some_and(|max| n > max) {
                return Err(format!("{at}: {value} has the wrong length"));
            }
        }
        if let Some(members) = value.as_object() {
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !members.contains_key(name) {
                    return Err(format!("{at}: `{name}` is required"));
                }
            }
            if schema.get("minProperties").and_then(Value::as_u64).is_some_and(|min| (members.len() as u64) < min) {
                return Err(format!("{at}: too few members"));
            }
            let properties = schema["properties"].as_object();
            for (name, member) in members {
                let here = format!("{at}.{name}");
                match (properties.and_then(|p| p.get(name)), schema.get("additionalProperties")) {
                    (Some(property), _) => self.check(property, member, &here)?,
                    (None, Some(Value::Bool(false))) => return Err(format!("{here} is not allowed")),
                    (None, Some(extra)) if extra.is_object() => self.check(extra, member, &here)?,
                    _ => {}
                }
            }
        }
        if let Some(items) = value.as_array() {
            if schema.get("minItems").and_then(Value::as_u64).is_some_and(|min| (items.len() as u64) < min)
                || schema.get("maxItems").and_then(Value::as_u64).is_some_and(|max| (items.len() as u64) > max)
            {
                return Err(format!("{at}: {} items is out of range", items.len()));
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    self.check(item, v, &format!("{at}[{i}]"))?;
                }
            }
        }
        for branch in schema["allOf"].as_array().into_iter().flatten() {
            self.check_level(branch, value, at, false)?;
        }
        if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            let errors: Vec<String> = branches.iter().filter_map(|b| self.check(b, value, at).err()).collect();
            if errors.len() == branches.len() {
                return Err(format!("{at}: fits no branch of anyOf: {}", errors.join("; ")));
            }
        }
        if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
            let fitting = branches.iter().filter(|b| self.check(b, value, at).is_ok()).count();
            if fitting != 1 {
                return Err(format!("{at}: fits {fitting} branches of oneOf, not one"));
            }
        }
        Ok(())
    }
}

/// Every error code there is; the match breaks the build when one is added.
fn every_error_code() -> Vec<&'static str> {
    use ErrorCode::*;
    let all = [
        MissingKey, InvalidKey, ExpiredKey, RevokedKey, ConsumerSuspended, RateLimited, CostExceedsQuota, Forbidden, InsufficientScope, UnknownApi,
        PayloadTooLarge, LengthRequired, NoRoute, UpstreamUnavailable, UpstreamTimeout, RequestTimeout, Unauthorized, InvalidBody,
        InvalidParameter, NotFound, ConsumerNotFound, Conflict, MethodNotAllowed, TooManyAttempts, Internal, Unavailable,
    ];
    for code in all {
        match code {
            MissingKey | InvalidKey | ExpiredKey | RevokedKey | ConsumerSuspended | RateLimited | CostExceedsQuota | Forbidden | InsufficientScope
            | UnknownApi | PayloadTooLarge | LengthRequired | NoRoute | UpstreamUnavailable | UpstreamTimeout | RequestTimeout | Unauthorized
            | InvalidBody | InvalidParameter | NotFound | ConsumerNotFound | Conflict | MethodNotAllowed | TooManyAttempts | Internal | Unavailable => {}
        }
    }
    all.iter().map(|c| c.as_str()).collect()
}

#[tokio::test]
async fn the_document_is_served_without_a_token() {
    let ts = TestServer::start().await;
    let res = ts.client.get(format!("{}/openapi.json", ts.admin)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let text = res.text().await.unwrap();
    assert_eq!(text, DOCUMENT, "the server answers the file as it is");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"), "info.version is the crate's version");
    // The admin token is not needed, and a wrong one does not get in the way.
    let res = ts.client.get(format!("{}/openapi.json", ts.admin)).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(res.status(), 200);
    // It is a GET only.
    let a = ts.admin_client().call("POST", "/openapi.json", None).await;
    assert_eq!(a.status, 405, "{}", a.text);
}

#[test]
fn every_route_is_documented_with_its_permission() {
    let doc = document();
    for rule in ROUTES {
        let op = operation(&doc, rule.method, rule.route);
        let want = format!("{:?}", rule.permission);
        assert_eq!(op["x-keytrail-permission"], json!(want), "{} {}", rule.method, rule.route);
        assert_eq!(op["x-keytrail-global-only"] == json!(true), rule.global_only, "{} {}: x-keytrail-global-only", rule.method, rule.route);
        if !rule.global_only {
            assert!(op.get("x-keytrail-global-only").is_none(), "{} {}: say it only where it is true", rule.method, rule.route);
        }
        // The global security applies: no override that opens or changes it.
        assert!(op.get("security").is_none_or(|s| s.as_array().is_some_and(|s| s.iter().any(|r| r.get("bearerAuth").is_some()))), "{} {}", rule.method, rule.route);
        assert!(op["responses"].get("401").is_some(), "{} {}: 401 is documented", rule.method, rule.route);
        assert!(op["responses"].get("403").is_some(), "{} {}: 403 is documented", rule.method, rule.route);
        // An address past its failed bearer tokens gets 429 on every route
        // that takes one (the events route's 429 also covers a key's spent limits).
        let locked = op["responses"].get("429").map(|r| resolve(&doc, r));
        let locked = locked.unwrap_or_else(|| panic!("{} {}: 429 too_many_attempts is documented", rule.method, rule.route));
        assert!(locked["description"].as_str().is_some_and(|d| d.contains("too_many_attempts")), "{} {}: {locked}", rule.method, rule.route);
        assert!(locked["headers"].get("Retry-After").is_some(), "{} {}: {locked}", rule.method, rule.route);
    }
    let shared = &doc["components"]["responses"]["TooManyAttempts"];
    assert_eq!(shared["content"]["application/json"]["example"]["error"]["code"], "too_many_attempts", "{shared}");
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")));
    for (method, route) in PUBLIC {
        let op = operation(&doc, method, route);
        assert_eq!(op["security"], json!([]), "{method} {route} needs no token");
        assert!(op.get("x-keytrail-permission").is_none(), "{method} {route}");
    }
}

#[test]
fn no_operation_is_stale() {
    let doc = document();
    let known: HashSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.route.to_string()))
        .chain(PUBLIC.iter().map(|(m, r)| (m.to_string(), r.to_string())))
        .collect();
    let tags: HashSet<&str> = doc["tags"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    let mut ids = HashSet::new();
    let ops = operations(&doc);
    for (method, route, op) in &ops {
        assert!(known.contains(&(method.clone(), route.clone())), "{method} {route} is documented but neither in access::ROUTES nor public");
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {route}: no operationId"));
        assert!(ids.insert(id), "operationId `{id}` twice");
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {route}: no summary");
        let op_tags = op["tags"].as_array().unwrap_or_else(|| panic!("{method} {route}: no tags"));
        assert!(!op_tags.is_empty() && op_tags.iter().all(|t| t.as_str().is_some_and(|t| tags.contains(t))), "{method} {route}: {op_tags:?}");
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {route}: no responses"));
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {route}: no success answer");
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{method} {route} {status}: no description");
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/Error", "{method} {route} {status}: errors are the one Error shape");
            }
        }
    }
    assert_eq!(ops.len(), known.len(), "one operation per route");
    // Path items hold operations and shared parameters only.
    for (route, item) in doc["paths"].as_object().unwrap() {
        for key in item.as_object().unwrap().keys() {
            assert!(METHODS.contains(&key.as_str()) || ["parameters", "summary", "description"].contains(&key.as_str()), "{route}: `{key}`");
        }
    }
}

#[test]
fn path_parameters_are_declared() {
    let doc = document();
    for (method, route, op) in operations(&doc) {
        let params = parameters(&doc, &route, op);
        let declared: BTreeSet<&str> = params.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect();
        let wanted: BTreeSet<&str> = route_params(&route).into_iter().collect();
        assert_eq!(declared, wanted, "{method} {route}: path parameters");
        for p in &params {
            assert!(p["name"].is_string() && p["in"].is_string() && p["schema"].is_object(), "{method} {route}: {p}");
            if p["in"] == "path" {
                assert_eq!(p["required"], true, "{method} {route}: `{}` must be required", p["name"]);
            }
        }
        let names: Vec<(&str, &str)> = params.iter().map(|p| (p["in"].as_str().unwrap(), p["name"].as_str().unwrap())).collect();
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{method} {route}: a parameter twice");
    }
}

#[test]
fn every_reference_resolves() {
    fn walk(doc: &Value, value: &Value, at: &str, count: &mut usize) {
        match value {
            Value::Object(members) => {
                if let Some(target) = members.get("$ref") {
                    let target = target.as_str().unwrap_or_else(|| panic!("{at}: $ref is not a string"));
                    assert!(target.starts_with("#/components/"), "{at}: `{target}` is not under components");
                    assert!(doc.pointer(&target[1..]).is_some(), "{at}: `{target}` resolves to nothing");
                    *count += 1;
                }
                for (k, v) in members {
                    walk(doc, v, &format!("{at}/{k}"), count);
                }
            }
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(doc, v, &format!("{at}/{i}"), count)),
            _ => {}
        }
    }
    let doc = document();
    let mut count = 0;
    walk(&doc, &doc, "#", &mut count);
    assert!(count > 100, "the document refers to its components ({count} references)");
}

#[test]
fn the_error_shape_lists_every_code() {
    let doc = document();
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error"]));
    let inner = &error["properties"]["error"];
    assert_eq!(inner["required"], json!(["code", "message"]));
    let listed: BTreeSet<&str> = inner["properties"]["code"]["enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let codes: BTreeSet<&str> = every_error_code().into_iter().collect();
    assert_eq!(listed, codes, "components/schemas/Error lists the codes of src/error.rs");
    assert_eq!(inner["properties"]["message"]["type"], "string");
}

#[test]
fn request_examples_fit_their_schemas() {
    let doc = document();
    let checker = Checker { doc: &doc, strict: true };
    let mut bodies = 0;
    for (method, route, op) in operations(&doc) {
        let Some(body) = op.get("requestBody") else { continue };
        let media = &resolve(&doc, body)["content"]["application/json"];
        let example = media.get("example").unwrap_or_else(|| panic!("{method} {route}: the request body has no example"));
        checker.check(&media["schema"], example, &format!("{method} {route} example")).unwrap();
        bodies += 1;
    }
    assert!(bodies >= 19, "{bodies} request bodies");
    // Schemas that say `deny_unknown_fields` refuse what they do not name.
    let schemas = &doc["components"]["schemas"];
    let refused = Checker { doc: &doc, strict: false }.check(&schemas["CreateTenant"], &json!({"id": "a", "name": "b", "extra": 1}), "CreateTenant");
    assert!(refused.is_err(), "the checker sees additionalProperties: false");
    for name in ["CreateTenant", "CreateApi", "CreateConsumer", "CreateKey", "RotateKey", "SetKeyScopes", "CreateTier", "UpdateTier", "AddBlock", "CreateAdmin", "Login", "AppEvent", "Policies", "RateSpec"] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
}

#[test]
fn no_key_secret_is_in_the_document() {
    for prefix in ["kt_live_", "kt_test_", "kta_", "kts_"] {
        for (at, _) in DOCUMENT.match_indices(prefix) {
            let tail = DOCUMENT[at + prefix.len()..].chars().take_while(|c| c.is_ascii_alphanumeric()).count();
            assert!(tail < 8, "something shaped like a secret at byte {at}: {}", &DOCUMENT[at..at + prefix.len() + tail]);
        }
    }
    assert!(matches!(keytrail::redact::redact(DOCUMENT), std::borrow::Cow::Borrowed(_)), "the redaction point masks nothing in it");
}

// --- every route, called as the document says ---

/// Calls routes with the document's examples and checks each answer
/// against the documented status and schema.
struct Walk<'d> {
    doc: &'d Value,
    admin: Admin,
    /// Values for the routes' `{param}`s.
    ids: HashMap<&'static str, String>,
    called: HashSet<(String, String)>,
}

impl<'d> Walk<'d> {
    fn example(&self, method: &str, route: &str) -> Value {
        let op = operation(self.doc, method, route);
        resolve(self.doc, &op["requestBody"])["content"]["application/json"]["example"].clone()
    }

    fn path(&self, route: &str) -> String {
        let mut path = route.to_string();
        for name in route_params(route) {
            let value = self.ids.get(name).unwrap_or_else(|| panic!("no value for `{{{name}}}` of {route}"));
            path = path.replace(&format!("{{{name}}}"), value);
        }
        path
    }

    /// Calls with the example body (if the operation has one).
    async fn call(&mut self, method: &str, route: &str) -> Answer {
        let body = operation(self.doc, method, route).get("requestBody").map(|_| self.example(method, route));
        let admin = self.admin.clone();
        self.call_as(&admin, method, route, body).await
    }

    async fn call_as(&mut self, admin: &Admin, method: &str, route: &str, body: Option<Value>) -> Answer {
        let op = operation(self.doc, method, route);
        let a = admin.call(method, &self.path(route), body).await;
        let what = format!("{method} {route}");
        let status = a.status.to_string();
        assert!((200..300).contains(&a.status), "{what}: {} {}", a.status, a.text);
        let response = op["responses"].get(&status).map(|r| resolve(self.doc, r));
        let response = response.unwrap_or_else(|| panic!("{what}: answered {status}, which the document does not list"));
        match response.get("content").and_then(Value::as_object) {
            None => assert!(a.text.is_empty(), "{what}: {status} documents no body"),
            Some(content) if content.contains_key("application/json") => {
                let body: Value = serde_json::from_str(&a.text).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
                let checker = Checker { doc: self.doc, strict: true };
                if let Err(problem) = checker.check(&content["application/json"]["schema"], &body, "answer") {
                    panic!("{what}: the answer does not fit the documented schema: {problem}");
                }
                let content_type = a.headers.get("content-type").cloned().unwrap_or_default();
                assert!(content_type.starts_with("application/json"), "{what}: {content_type}");
            }
            Some(content) => {
                let content_type = a.headers.get("content-type").cloned().unwrap_or_default();
                assert!(content.keys().any(|t| content_type.starts_with(t.as_str())), "{what}: {content_type} is not documented");
            }
        }
        for name in response["headers"].as_object().into_iter().flat_map(|h| h.keys()) {
            assert!(a.headers.contains_key(&name.to_lowercase()), "{what}: no `{name}` header");
        }
        self.called.insert((method.to_string(), route.to_string()));
        a
    }
}

#[tokio::test]
async fn every_route_answers_as_documented() {
    let ts = TestServer::start().await;
    let doc = document();
    let mut walk = Walk { doc: &doc, admin: ts.admin_client(), ids: HashMap::new(), called: HashSet::new() };
    let nobody = Admin { token: String::new(), ..ts.admin_client() };

    walk.call_as(&nobody, "GET", "/healthz", None).await;
    walk.call_as(&nobody, "GET", "/openapi.json", None).await;
    walk.call("GET", "/v1/me").await;
    walk.call("GET", "/v1/status").await;

    // Configuration, each object made from the document's example.
    let a = walk.call("POST", "/v1/tenants").await;
    assert_eq!(a.status, 201);
    walk.ids.insert("tenant", a.body["id"].as_str().unwrap().to_string());
    let listed = walk.call("GET", "/v1/tenants").await;
    let list_schema = resolve(&doc, &operation(&doc, "GET", "/v1/tenants")["responses"]["200"]["content"]["application/json"]["schema"]);
    for field in list_schema["required"].as_array().unwrap() {
        assert!(listed.body.get(field.as_str().unwrap()).is_some(), "GET /v1/tenants answers `{field}`");
    }
    assert_eq!(listed.body["tenants"][0]["id"], json!(walk.ids["tenant"]));

    let a = walk.call("POST", "/v1/tenants/{tenant}/apis").await;
    assert_eq!(a.status, 201);
    walk.ids.insert("api", a.body["id"].as_str().unwrap().to_string());
    walk.call("GET", "/v1/tenants/{tenant}/apis").await;
    walk.call("PUT", "/v1/tenants/{tenant}/apis/{api}/policies").await;

    let a = walk.call("POST", "/v1/tenants/{tenant}/tiers").await;
    assert_eq!(a.status, 201);
    walk.ids.insert("tier", a.body["id"].as_str().unwrap().to_string());
    walk.call("GET", "/v1/tenants/{tenant}/tiers").await;
    walk.call("PUT", "/v1/tenants/{tenant}/tiers/{tier}").await;

    let a = walk.call("POST", "/v1/tenants/{tenant}/alerts").await;
    assert!(a.body["webhook_secret"].as_str().is_some_and(|s| s.starts_with("ktwh_")), "{}", a.text);
    walk.ids.insert("rule", a.body["id"].as_str().unwrap().to_string());
    walk.call("GET", "/v1/tenants/{tenant}/alerts").await;
    walk.call("GET", "/v1/tenants/{tenant}/alerts/{rule}").await;
    let a = walk.call("POST", "/v1/tenants/{tenant}/alerts/{rule}/rotate-secret").await;
    assert!(a.body["webhook_secret"].as_str().is_some_and(|s| s.starts_with("ktwh_")), "{}", a.text);
    let a = walk.call("PUT", "/v1/tenants/{tenant}/alerts/{rule}").await;
    assert!(a.body.get("webhook_secret").is_none(), "{}", a.text);

    let a = walk.call("POST", "/v1/tenants/{tenant}/consumers").await;
    assert_eq!(a.status, 201);
    walk.ids.insert("consumer", a.body["id"].as_str().unwrap().to_string());
    walk.call("GET", "/v1/tenants/{tenant}/consumers").await;
    let a = walk.call("PUT", "/v1/tenants/{tenant}/consumers/{consumer}/tier").await;
    assert_eq!(a.body["tier"], json!(walk.ids["tier"]));
    walk.call("POST", "/v1/tenants/{tenant}/consumers/{consumer}/suspend").await;
    walk.call("POST", "/v1/tenants/{tenant}/consumers/{consumer}/reactivate").await;

    let a = walk.call("POST", "/v1/tenants/{tenant}/consumers/{consumer}/keys").await;
    assert_eq!(a.status, 201);
    assert_eq!(a.headers.get("cache-control").map(String::as_str), Some("no-store"));
    walk.ids.insert("key_id", a.body["key_id"].as_str().unwrap().to_string());
    walk.call("GET", "/v1/tenants/{tenant}/consumers/{consumer}/keys").await;
    walk.call("GET", "/v1/keys/{key_id}").await;
    walk.call("PUT", "/v1/keys/{key_id}/scopes").await;
    let a = walk.call("POST", "/v1/keys/{key_id}/rotate").await;
    assert_eq!(a.status, 201);
    assert_eq!(a.body["replaces"]["status"], "rotating");
    let key = a.body["key"].as_str().unwrap().to_string();
    walk.call("POST", "/v1/keys/{key_id}/revoke").await;

    // A call the api's policies refuse: a request event to read back.
    let path = "/".to_string() + &walk.ids["api"] + "/a/internal";
    let res = ts.client.get(format!("{}{path}", ts.gateway)).header("X-API-Key", &key).send().await.unwrap();
    assert!(res.status().is_client_error() || res.status().is_server_error(), "{}", res.status());

    let a = walk.call("POST", "/v1/blocklist").await;
    assert_eq!(a.status, 201);
    let global_block = a.body["id"].as_str().unwrap().to_string();
    walk.call("GET", "/v1/blocklist").await;
    let a = walk.call("POST", "/v1/tenants/{tenant}/blocklist").await;
    assert_eq!(a.status, 201);
    let tenant_block = a.body["id"].as_str().unwrap().to_string();
    walk.call("GET", "/v1/tenants/{tenant}/blocklist").await;

    for route in ["/api/v1/settings/logging", "/v1/tenants/{tenant}/settings/logging", "/api/v1/settings/retention", "/v1/tenants/{tenant}/settings/retention"] {
        walk.call("GET", route).await;
        walk.call("PUT", route).await;
    }

    // Admins, and a person who signs in with the login's example.
    let a = walk.call("POST", "/v1/admins").await;
    assert_eq!(a.status, 201);
    assert!(a.body["token"].is_string(), "a robot gets its token");
    walk.ids.insert("admin_id", a.body["id"].as_str().unwrap().to_string());
    walk.call("GET", "/v1/admins").await;
    let login = walk.example("POST", "/v1/auth/login");
    let person = json!({"name": login["name"], "password": login["password"], "role": "viewer"});
    let owner = walk.admin.clone();
    let a = walk.call_as(&owner, "POST", "/v1/admins", Some(person)).await;
    assert!(a.body.get("token").is_none(), "a person gets no token");
    let a = walk.call_as(&nobody, "POST", "/v1/auth/login", Some(login)).await;
    let session = Admin { token: a.body["session_token"].as_str().unwrap().to_string(), ..ts.admin_client() };
    walk.call_as(&session, "POST", "/v1/auth/logout", None).await;

    // The audit trail, once everything above is committed.
    let a = walk.call("POST", "/v1/audit/{tenant}/events").await;
    assert_eq!(a.status, 201);
    ts.flush().await;
    let a = walk.call("GET", "/v1/audit/{tenant}").await;
    assert!(!a.body["logs"].as_array().unwrap().is_empty(), "the refused call is in the trail");
    let a = walk.call("GET", "/v1/audit/{tenant}/security").await;
    assert!(!a.body["events"].as_array().unwrap().is_empty());
    let a = walk.call("GET", "/v1/audit/{tenant}/admin").await;
    assert!(!a.body["entries"].as_array().unwrap().is_empty());
    let a = walk.call("GET", "/v1/audit/{tenant}/events").await;
    assert!(!a.body["events"].as_array().unwrap().is_empty());
    walk.call("GET", "/v1/audit/{tenant}/export/csv").await;
    walk.call("GET", "/v1/audit/{tenant}/export/json").await;
    walk.call("GET", "/v1/audit/{tenant}/verify").await;
    walk.call("GET", "/v1/audit/{tenant}/stats").await;
    walk.call("GET", "/v1/audit/{tenant}/stats/timeline").await;
    walk.call("GET", "/v1/audit/{tenant}/stats/consumers/{consumer}").await;

    walk.call("POST", "/v1/tenants/{tenant}/consumers/{consumer}/erase").await;

    // Removals last.
    walk.ids.insert("id", tenant_block);
    walk.call("DELETE", "/v1/tenants/{tenant}/blocklist/{id}").await;
    walk.ids.insert("id", global_block);
    walk.call("DELETE", "/v1/blocklist/{id}").await;
    let owner = walk.admin.clone();
    walk.call_as(&owner, "PUT", "/v1/tenants/{tenant}/consumers/{consumer}/tier", Some(json!({"tier": null}))).await;
    walk.call("DELETE", "/v1/tenants/{tenant}/tiers/{tier}").await;
    walk.call("DELETE", "/v1/tenants/{tenant}/alerts/{rule}").await;
    walk.call("POST", "/v1/admins/{admin_id}/unlock").await;
    walk.ids.insert("address", "2001:db8::7".to_string());
    walk.call("POST", "/v1/addresses/{address}/unlock").await;
    walk.call("DELETE", "/v1/admins/{admin_id}").await;

    let missed: Vec<String> = ROUTES
        .iter()
        .map(|r| (r.method, r.route))
        .chain(PUBLIC)
        .filter(|(m, r)| !walk.called.contains(&(m.to_string(), r.to_string())))
        .map(|(m, r)| format!("{m} {r}"))
        .collect();
    assert!(missed.is_empty(), "routes this walk does not call yet: {missed:?}");
}
