//! `keytrail demo`: everything on one machine — a built-in echo upstream, a
//! store in a temporary folder, a tenant, an api, a consumer and a key — with
//! the curl lines to try it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::alerts::{GroupBy, Match, RuleSpec};
use crate::config::{Config, Overrides};
use crate::control::{Actor, NewApi, NewKey};
use crate::keys::KeyEnvironment;
use crate::server::{self, Bootstrap};

/// An upstream that answers every request with what it received: method,
/// path, headers and the number of body bytes (read as a stream, not kept).
pub async fn start_echo_upstream(listen: SocketAddr) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await.context("cannot start the echo upstream")?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(echo);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((addr, task))
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), serde_json::json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    let answer = serde_json::json!({
        "echo": {
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "headers": headers,
            "body_bytes": body_bytes,
        }
    });
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(response)
}

/// `text` as one word of a POSIX shell command line, as the demo prints
/// its lines to paste: as it is when it holds only characters no shell
/// reads specially, otherwise in single quotes (a path with a space).
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub gateway_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub keep: bool,
    pub bootstrap_token: Option<String>,
}

/// Runs the demo until `stop` resolves.
pub async fn run(options: DemoOptions, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let (data_dir, temporary) = match options.data_dir {
        // Said naming the flag, the demo's only way to a data directory
        // (the start's own check names `serve`'s three ways to one).
        Some(dir) if dir.exists() && !dir.is_dir() => {
            let why = format!("--data-dir: {} is not a directory; give a directory (it is created if missing)", dir.display());
            return Err(crate::config::ConfigError::Invalid(why).into());
        }
        Some(dir) => (dir, false),
        None => {
            let name = format!("keytrail-demo-{}", crate::keys::generate_id("run").trim_start_matches("run_"));
            (std::env::temp_dir().join(name), true)
        }
    };
    // A port in use, said naming the demo's own flag (the start's message
    // names `serve`'s variable and config key, which the demo does not read).
    let listens = [(options.gateway_listen, "--gateway-listen", "the gateway"), (options.admin_listen, "--admin-listen", "the admin API")];
    for (addr, flag, what) in listens.into_iter().filter_map(|(addr, flag, what)| Some((addr?, flag, what))) {
        if addr.port() == 0 {
            continue;
        }
        if let Err(error) = std::net::TcpListener::bind(addr) {
            let hint = match error.kind() {
                std::io::ErrorKind::AddrInUse => format!(" (another program, or another keytrail, listens there: pick another address with {flag}; port 0 picks a free one)"),
                std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::PermissionDenied => format!(" (pick another address with {flag})"),
                _ => String::new(),
            };
            return Err(anyhow::Error::new(error).context(format!("cannot listen on {addr} for {what}{hint}")));
        }
    }
    let config = crate::config::resolve(
        crate::config::FileConfig::default(),
        Overrides {
            data_dir: Some(data_dir.clone()),
            gateway_listen: options.gateway_listen,
            admin_listen: options.admin_listen,
            log_level: None,
            bootstrap_token: options.bootstrap_token.map(crate::config::Hidden),
        },
    )?;
    let result = run_with(config, stop).await;
    if temporary && !options.keep {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

async fn run_with(config: Config, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let (echo_addr, echo_task) = start_echo_upstream("127.0.0.1:0".parse().expect("valid")).await?;
    let server = server::start(config).await?;
    let control = server.control.clone();
    let actor = Actor { admin_id: "adm_bootstrap".into(), user_agent: Some("keytrail demo".into()), credential: "demo".into(), ..Actor::default() };

    let setup = (|| -> Result<String, crate::error::ApiError> {
        control.create_tenant("demo", "Demo tenant")?;
        control.create_api(
            "demo",
            NewApi {
                id: "echo".into(),
                path_prefix: "/echo".into(),
                upstream: format!("http://{echo_addr}"),
                timeout_ms: None,
                rate_limit: None,
                costs: Vec::new(),
                policies: Default::default(),
            },
            &actor,
        )?;
        let consumer = control.create_consumer("demo", "demo-client", serde_json::json!({"created_by": "keytrail demo"}), None)?;
        let key = control.create_key(
            "demo",
            &consumer.id,
            NewKey { scopes: vec![], expires_at_ms: None, environment: KeyEnvironment::Test },
            &actor,
        )?;
        // An alert rule to watch fire: refused calls from one address.
        control.create_alert_rule(
            "demo",
            "refused-calls".into(),
            RuleSpec {
                description: Some("5 calls refused for their key (none, or a wrong one) from one address within a minute".into()),
                matcher: Match { event_type: Some(crate::event::security_type::AUTH_FAILED.into()), ..Match::default() },
                threshold: 5,
                window_secs: 60,
                group_by: Some(GroupBy::ClientIp),
                cooldown_secs: None,
                webhook_url: None,
                enabled: true,
            },
        )?;
        Ok(key.secret)
    })();
    let key = match setup {
        Ok(key) => key,
        Err(error) => {
            let dir = server.data_dir.clone();
            server.shutdown().await;
            if error.code == crate::error::ErrorCode::Conflict {
                anyhow::bail!(
                    "demo setup failed: {error}: {dir} already holds a keytrail (an earlier demo?); give the demo a fresh --data-dir, or go on with this one with `keytrail serve --data-dir {dir}`",
                    dir = dir.display()
                );
            }
            anyhow::bail!("demo setup failed in {}: {error}", dir.display());
        }
    };

    let gw = server.gateway_addr;
    let admin = server.admin_addr;
    // A line that works as pasted (a `<placeholder>` is a redirection to
    // a shell): the token from where it is, never printed; a variable that
    // is not set stops the line with the shell's message, saying what to
    // set, rather than going on with an empty token.
    let token_line = match &server.bootstrap {
        Bootstrap::Generated(path) => format!("export KEYTRAIL_TOKEN=$(cat {})", shell_word(&path.display().to_string())),
        // The token the demo was started with, in the shell that started it.
        Bootstrap::FromEnvironment => r#"export KEYTRAIL_TOKEN="${KEYTRAIL_BOOTSTRAP_TOKEN:?set it to the token this demo was started with}""#.to_string(),
        // The data directory had admins: one of their tokens.
        Bootstrap::Existing => r#"export KEYTRAIL_TOKEN="${KEYTRAIL_TOKEN:?set it to an admin token of this data directory}""#.to_string(),
    };
    // This very binary, as the commands to try name it (under `cargo run`
    // it is not on the PATH).
    let cli = std::env::current_exe().map_or_else(|_| "keytrail".to_string(), |p| shell_word(&p.display().to_string()));
    // Not `println!`: a closed stdout (`keytrail demo | head -1`) would
    // panic the demo after it started serving.
    let instead = format!("the demo serves on http://{gw} (admin API http://{admin}), but its key could not be shown");
    server::announce(
        &format!(
            "keytrail demo is running
  gateway    http://{gw}   (api `echo` at /echo -> built-in echo upstream at http://{echo_addr})
  admin API  http://{admin}
  data       {data}

Demo API key for consumer `demo-client` (shown once, never stored in the clear):
  {key}

Call the api through the gateway:
  curl -i http://{gw}/echo/hello -H 'Authorization: Bearer {key}'
  curl -i http://{gw}/echo/hello -H 'X-API-Key: {key}'
  curl -i http://{gw}/echo/hello          # refused: missing_key

Read the audit trail:
  {token_line}
  curl -s http://{admin}/v1/audit/demo -H \"Authorization: Bearer $KEYTRAIL_TOKEN\"
  curl -s http://{admin}/v1/audit/demo/security -H \"Authorization: Bearer $KEYTRAIL_TOKEN\"
  curl -s http://{admin}/v1/audit/demo/export/csv -H \"Authorization: Bearer $KEYTRAIL_TOKEN\"

Five refused calls from one address within a minute fire the alert rule `refused-calls`:
  for i in 1 2 3 4 5; do curl -s -o /dev/null http://{gw}/echo/hello -H 'X-API-Key: kt_test_wrong'; done
  curl -s 'http://{admin}/v1/audit/demo/security?event_type=alert_fired' -H \"Authorization: Bearer $KEYTRAIL_TOKEN\"

Or from the command line, with the same token:
  {cli} audit list --admin-url http://{admin} --tenant demo
  {cli} keys list --admin-url http://{admin} --tenant demo --consumer demo-client
  {cli} alerts list --admin-url http://{admin} --tenant demo

Press Ctrl-C to stop.
",
            data = server.data_dir.display()
        ),
        &instead,
    );
    stop.await;
    server::announce("stopping: finishing requests and committing the audit trail\n", "stopping");
    server.shutdown().await;
    echo_task.abort();
    server::announce("stopped\n", "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn shell_words_are_quoted_when_a_shell_would_split_them() {
        assert_eq!(shell_word("/usr/local/bin/keytrail"), "/usr/local/bin/keytrail");
        assert_eq!(shell_word("/home/me/my tools/keytrail"), "'/home/me/my tools/keytrail'");
        assert_eq!(shell_word("/tmp/it's/keytrail"), r"'/tmp/it'\''s/keytrail'");
        assert_eq!(shell_word("/tmp/$HOME/x"), "'/tmp/$HOME/x'");
        assert_eq!(shell_word(""), "''");
    }
}
