//! The live map page (`/` on the live address) in headless Chromium (Debian's `chromium` package, installed
//! by scripts/setup --tests; `TRACKWAY_CHROMIUM` names another binary). The test drives the browser over the
//! DevTools protocol itself: the page loads, logs in with `?token=`, subscribes to the group from
//! `?group=`, shows positions XADDed to the stream as markers, moves them, keeps them in place for a late
//! (older) position, and after its WebSocket is closed reconnects and resumes with `since`, so positions
//! stored while it was disconnected still arrive. A screenshot is saved to
//! `<target dir>/artifacts/map_page.png`. In `directus` mode the page logs in with email and password
//! against a real Directus (cross-origin, allowed by Directus's CORS settings), is refused a device the
//! user has no grant for, and renews its short-lived token with Directus's refresh token.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{connect_async, tungstenite::Message, MaybeTlsStream, WebSocketStream};
use trackway_tests::{
    connect,
    directus::Directus,
    fresh_database,
    live::{admin_token, live_flags, LiveRelay},
    relay::{redis, redis_url, unique, xadd_payloads},
};

/// The browser: its process group is killed and its profile removed on drop, whatever happened.
struct Browser {
    child: Child,
    dir: PathBuf,
}

impl Browser {
    fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        text[start..].to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helpers (zygote, renderer, GPU, crashpad) share the group started with process_group(0).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..5 {
            if fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One page of a headless Chromium, driven over the DevTools protocol.
struct Page {
    browser: Browser,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Console messages, exceptions and log entries (CSP violations among them), in order.
    console: Vec<String>,
}

impl Page {
    async fn launch() -> Page {
        let binary = std::env::var("TRACKWAY_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let dir = std::env::temp_dir().join(format!("trackway-chromium-{}-{}", std::process::id(), fastrand::u32(..)));
        fs::create_dir_all(&dir).expect("browser directory");
        let log = fs::File::create(dir.join("chromium.log")).expect("log file");
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&binary)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-crash-reporter",
                    "--disable-breakpad",
                    "--remote-debugging-port=0",
                    "--window-size=1280,800",
                    &format!("--user-data-dir={}", dir.join("profile").display()),
                    "about:blank",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {binary:?} ({e}): install Debian's chromium package (scripts/setup --tests does)"
                    )
                })
        };
        let browser = Browser { child, dir };
        let port = wait_devtools_port(&browser).await;
        let page_url = page_target(&browser, port).await;
        let (socket, _) = connect_async(page_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("DevTools WebSocket {page_url}: {e}\n{}", browser.log()));
        let mut page = Page { browser, socket, next_id: 0, console: Vec::new() };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- page console ---\n{}\n--- chromium log (tail) ---\n{}",
            self.console.join("\n"),
            self.browser.log()
        )
    }

    /// Sends a command and returns its result; events read meanwhile go to `console`.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        if let Err(e) = self.socket.send(Message::text(message)).await {
            panic!("DevTools {method}: {e}\n{}", self.diagnostics());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(next) => next,
                Err(_) => panic!("DevTools {method}: no answer within 30 s\n{}", self.diagnostics()),
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                other => panic!("DevTools connection ended during {method}: {other:?}\n{}", self.diagnostics()),
            };
            let frame: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if frame["id"] == id {
                if let Some(error) = frame.get("error") {
                    panic!("DevTools {method} failed: {error}\n{}", self.diagnostics());
                }
                return frame["result"].clone();
            }
            self.note_event(&frame);
        }
    }

    fn note_event(&mut self, frame: &Value) {
        let params = &frame["params"];
        match frame["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| {
                                v["value"].as_str().map(str::to_owned).unwrap_or_else(|| v["description"].to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.console.push(format!("console.{}: {}", params["type"].as_str().unwrap_or("?"), args.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("?");
                self.console.push(format!("exception: {text}"));
            }
            Some("Log.entryAdded") => {
                let entry = &params["entry"];
                self.console.push(format!(
                    "log.{}: {} {}",
                    entry["level"].as_str().unwrap_or("?"),
                    entry["text"].as_str().unwrap_or(""),
                    entry["url"].as_str().unwrap_or("")
                ));
            }
            _ => {}
        }
    }

    /// The value of a JavaScript expression; `None` when it threw (e.g. before the page script ran).
    async fn eval(&mut self, expression: &str) -> Option<Value> {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        if result.get("exceptionDetails").is_some() {
            return None;
        }
        Some(result["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy (not null, false, 0 or ""), then returns it.
    async fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await;
            let truthy = match &value {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Number(n)) => n.as_f64() != Some(0.0),
                Some(Value::String(s)) => !s.is_empty(),
                Some(_) => true,
            };
            if truthy {
                return value.unwrap_or(Value::Null);
            }
            if tokio::time::Instant::now() >= deadline {
                let summary = self.eval(SUMMARY).await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n  expression: {expression}\n  last value: {value:?}\n  \
                     page state: {}\n{}",
                    summary.map(|v| v.to_string()).unwrap_or_else(|| "(unavailable)".into()),
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where a device's marker is, from the DOM.
    async fn marker(&mut self, device: &str) -> Option<(f64, f64)> {
        let expression = format!(
            "(() => {{ const m = document.querySelector('#map .marker[data-device=\"{device}\"]'); \
             return m ? [Number(m.dataset.lat), Number(m.dataset.lon)] : null; }})()"
        );
        let value = self.eval(&expression).await?;
        Some((value[0].as_f64()?, value[1].as_f64()?))
    }

    async fn wait_marker_at(&mut self, device: &str, lat: f64, lon: f64) {
        let expression = format!(
            "(() => {{ const m = document.querySelector('#map .marker[data-device=\"{device}\"]'); \
             return !!m && Number(m.dataset.lat) === {lat} && Number(m.dataset.lon) === {lon}; }})()"
        );
        self.wait_for(&format!("the marker of {device} at {lat}, {lon}"), &expression, Duration::from_secs(15)).await;
    }

    /// Fills the Directus login form and submits it, as a user would.
    async fn log_in(&mut self, email: &str, password: &str) {
        let script = format!(
            "(() => {{ document.getElementById('email').value = {}; document.getElementById('password').value = {}; \
             document.getElementById('login').requestSubmit(); return true; }})()",
            Value::from(email),
            Value::from(password)
        );
        assert_eq!(self.eval(&script).await, Some(json!(true)), "submit the login form\n{}", self.diagnostics());
    }

    async fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let data = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        fs::create_dir_all(path.parent().expect("parent")).expect("artifacts directory");
        fs::write(path, data).expect("write screenshot");
    }
}

/// The page's state in one object, for failure messages.
const SUMMARY: &str = "(() => { const m = window.trackwayMap; if (!m) return 'no window.trackwayMap'; \
    return {conn: m.state.conn, detail: m.state.detail, closeCode: m.state.closeCode, connects: m.state.connects, \
    stats: m.state.stats, sent: m.state.sent, \
    subscriptions: [...m.subscriptions.values()].map(s => [s.key, s.status, s.error, s.cursor]), \
    devices: [...m.devices.values()].map(d => [d.id, d.lat, d.lon, d.doc && d.doc.timestamp])}; })()";

/// Reads the port Chromium chose from `<profile>/DevToolsActivePort`.
async fn wait_devtools_port(browser: &Browser) -> u16 {
    let file = browser.dir.join("profile").join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) =
            fs::read_to_string(&file).ok().and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        {
            return port;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Chromium wrote no {} within 30 s\n--- chromium log ---\n{}",
            file.display(),
            browser.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `webSocketDebuggerUrl` of the browser's page (`GET /json`).
async fn page_target(browser: &Browser, port: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/json")).await {
            let targets: Value =
                serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
            let page = targets.as_array().and_then(|t| t.iter().find(|t| t["type"] == "page"));
            if let Some(url) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                return url.to_owned();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no page target on port {port}\n{}", browser.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `<target dir>/artifacts`: `CARGO_TARGET_DIR` when set, else the directory this test binary was built in.
fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("artifacts");
    }
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/debug/deps/map_page-…
    exe.ancestors().nth(3).map_or_else(|| PathBuf::from("target"), Path::to_path_buf).join("artifacts")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a Unix time in milliseconds.
fn rfc3339(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

/// A position document `seconds` after `base` (Unix ms), with a 64-bit and a byte-string attribute.
fn position(device: &str, base: u64, seconds: i64, lat: f64, lon: f64, speed: u32, angle: u32) -> (String, Value) {
    let ts = rfc3339(base.saturating_add_signed(seconds * 1000));
    let doc = json!({
        "deviceId": device, "timestamp": ts, "latitude": lat, "longitude": lon, "speed": speed, "angle": angle,
        "satellites": 11,
        "attributes": {"11": {"__bigint": "18446744073709551615"}, "66": 12873, "239": 1, "281": {"__buffer_b64": "UDAzMDA="}}
    });
    (doc.to_string(), doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_page_shows_moves_and_resumes_live_positions_in_headless_chromium() {
    let db = fresh_database("map_page").await;
    let sql = connect(&db).await;
    for device in ["veh-1", "veh-2", "veh-3"] {
        sql.execute("INSERT INTO trackway.device_groups VALUES ('fleet', $1)", &[&device]).await.expect("group row");
    }
    let base = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64 - 120_000;
    // veh-3 has a position before the page opens: it comes in the snapshot.
    let (p, _) = position("veh-3", base, 0, 54.6755, 25.3121, 0, 90);
    sql.query("SELECT trackway.ingest($1)", &[&p]).await.expect("ingest");

    let stream = unique("map_page");
    let relay = LiveRelay::start(&live_flags(&db, &stream, &[])).await;

    // The page's files: types and a Content-Security-Policy that allows nothing from other hosts.
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/map.js", "text/javascript; charset=utf-8"),
        ("/map.css", "text/css; charset=utf-8"),
        ("/config.json", "application/json"),
    ] {
        let response = reqwest::get(format!("http://{}{path}", relay.live)).await.expect("GET");
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "GET {path}");
        let csp = headers["content-security-policy"].to_str().expect("CSP");
        assert!(csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains("http"), "{path}: no other origin without a tile URL: {csp}");
    }
    let config =
        reqwest::get(format!("http://{}/config.json", relay.live)).await.expect("GET").text().await.expect("body");
    let config: Value = serde_json::from_str(&config).expect("config.json");
    assert_eq!(config, json!({"auth": "jwt", "directusUrl": null, "livePath": "/live", "tileUrl": null}));

    let mut page = Page::launch().await;
    let url = format!("http://{}/?token={}&group=fleet", relay.live, admin_token());
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_for(
        "the connection to be live",
        "window.trackwayMap && trackwayMap.state.conn === 'live'",
        Duration::from_secs(20),
    )
    .await;
    page.wait_for(
        "the group subscription",
        "trackwayMap.subscriptions.get('group:fleet')?.status === 'live'",
        Duration::from_secs(15),
    )
    .await;
    page.wait_marker_at("veh-3", 54.6755, 25.3121).await;
    let address = page.eval("location.search").await;
    assert_eq!(address, Some(json!("?group=fleet")), "the token is taken out of the address bar");

    // A position XADDed to the stream appears as a marker; the next one moves it.
    let mut redis = redis(&redis_url()).await;
    let (p1, _) = position("veh-1", base, 60, 54.6872, 25.2797, 38, 45);
    let (p2_text, p2) = position("veh-2", base, 60, 54.6991, 25.2488, 12, 200);
    xadd_payloads(&mut redis, &stream, &[p1, p2_text]).await;
    page.wait_marker_at("veh-1", 54.6872, 25.2797).await;
    page.wait_marker_at("veh-2", p2["latitude"].as_f64().expect("lat"), p2["longitude"].as_f64().expect("lon")).await;
    let (p3, _) = position("veh-1", base, 70, 54.6901, 25.2868, 47, 60);
    xadd_payloads(&mut redis, &stream, &[p3]).await;
    page.wait_marker_at("veh-1", 54.6901, 25.2868).await;

    // A late (older) position is taken but does not move the marker back.
    let (late, _) = position("veh-1", base, 30, 54.6801, 25.2701, 5, 10);
    xadd_payloads(&mut redis, &stream, &[late]).await;
    page.wait_for("the late position to arrive", "trackwayMap.state.stats.late >= 1", Duration::from_secs(15)).await;
    assert_eq!(page.marker("veh-1").await, Some((54.6901, 25.2868)), "a late position moved the marker back");

    // The list shows the latest values.
    let row = page
        .wait_for(
            "the device list",
            "(() => { const r = document.querySelector('#devices tr[data-device=\"veh-1\"]'); \
             return r && [r.querySelector('.speed').textContent, r.querySelector('.heading').textContent, \
             r.querySelector('.age').textContent, r.querySelector('.attrs').title]; })()",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(row[0], "47 km/h", "{row}");
    assert_eq!(row[1], "60° NE", "{row}");
    assert!(row[2].as_str().is_some_and(|age| age.ends_with(" s") || age.ends_with(" min")), "{row}");
    let attributes = row[3].as_str().expect("attributes");
    assert!(attributes.contains("11=18446744073709551615"), "__bigint revived: {attributes}");
    assert!(attributes.contains("281=0x5030333030"), "__buffer_b64 revived to bytes: {attributes}");

    // The connection drops; positions stored meanwhile arrive after the reconnect (resume with `since`).
    let (p4, _) = position("veh-1", base, 80, 54.6925, 25.2950, 51, 70);
    let (p5, _) = position("veh-1", base, 90, 54.6948, 25.3032, 53, 75);
    let replays_before = page.eval("trackwayMap.state.stats.replays").await.and_then(|v| v.as_u64()).unwrap_or(0);
    page.eval("trackwayMap.socket.close(); true").await.expect("close the page's socket");
    for p in [&p4, &p5] {
        sql.query("SELECT trackway.ingest($1)", &[p]).await.expect("ingest while disconnected");
    }
    page.wait_for(
        "the page to reconnect",
        "trackwayMap.state.connects >= 2 && trackwayMap.state.conn === 'live'",
        Duration::from_secs(20),
    )
    .await;
    page.wait_marker_at("veh-1", 54.6948, 25.3032).await;
    let resumed = page
        .eval("trackwayMap.state.sent.filter(m => m.type === 'subscribe' && m.group === 'fleet' && m.since).length")
        .await;
    assert_eq!(resumed, Some(json!(1)), "one resume with since after the reconnect");
    let stats = page.eval("trackwayMap.state.stats").await.expect("stats");
    assert_eq!(stats["replays"].as_u64(), Some(replays_before + 1), "{stats}");
    assert!(stats["replayed"].as_u64() >= Some(2), "both positions stored while disconnected replayed: {stats}");
    let track = page.eval("trackwayMap.devices.get('veh-1').track.map(p => p.lat)").await.expect("track");
    assert_eq!(track, json!([54.6801, 54.6872, 54.6901, 54.6925, 54.6948]), "the whole track, in time order, no gap");

    // Live again after the resume.
    let (p6, _) = position("veh-1", base, 100, 54.6969, 25.3101, 49, 80);
    xadd_payloads(&mut redis, &stream, &[p6]).await;
    page.wait_marker_at("veh-1", 54.6969, 25.3101).await;
    // Let the ages tick once so the screenshot shows a settled page.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let shot = artifacts_dir().join("map_page.png");
    page.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());

    // A refused token: the page says so (4001), shows the login form, and does not loop.
    let url = format!("http://{}/?token=not-a-token&group=fleet", relay.live);
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_for(
        "the refused token to show",
        "window.trackwayMap && trackwayMap.state.conn === 'error' && trackwayMap.state.closeCode === 4001 \
         && !document.getElementById('login').hidden && !document.getElementById('token').parentElement.hidden",
        Duration::from_secs(15),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let connects = page.eval("trackwayMap.state.connects").await;
    assert_eq!(connects, Some(json!(1)), "no reconnect loop with a refused token");

    let problems: Vec<&String> = page
        .console
        .iter()
        .filter(|line| {
            line.starts_with("exception") || line.contains("Content Security Policy") || line.contains("Refused")
        })
        .collect();
    assert!(problems.is_empty(), "the page reported problems: {problems:#?}\n{}", page.diagnostics());
    drop(page);
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_page_logs_in_through_directus_and_renews_its_token() {
    // The page's origin must be known before Directus starts (CORS), so the live listener is bound first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind live");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    // A 30 s access token: the page renews it (at half its life) with the refresh token during the test.
    let directus = Directus::start_with(&[
        ("CORS_ENABLED", "true"),
        ("CORS_ORIGIN", origin.as_str()),
        ("ACCESS_TOKEN_TTL", "30s"),
    ])
    .await;
    let db = fresh_database("map_page_dx").await;
    let sql = connect(&db).await;
    sql.execute("INSERT INTO trackway.live_grants VALUES ($1, 'device', 'dx-1')", &[&directus.user_id])
        .await
        .expect("grant");
    let stream = unique("map_page_dx");
    let flags = live_flags(&db, &stream, &["--auth", "directus", "--directus-url", &directus.url]);
    let relay = LiveRelay::start_on(&flags, listener).await;

    let csp = reqwest::get(format!("{origin}/"))
        .await
        .expect("GET /")
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .expect("CSP");
    assert!(csp.contains(&format!("connect-src 'self' {}", directus.url)), "the login request is allowed: {csp}");

    let mut page = Page::launch().await;
    page.call("Page.navigate", json!({"url": format!("{origin}/?device=dx-1&device=dx-2")})).await;
    page.wait_for(
        "the Directus login form",
        "window.trackwayMap && !document.getElementById('login').hidden \
         && !document.getElementById('login-directus').hidden && document.getElementById('login-token').hidden",
        Duration::from_secs(20),
    )
    .await;

    // A wrong password: Directus's refusal is shown and nothing connects.
    page.log_in(&directus.user_email, "not-the-password").await;
    page.wait_for(
        "the refused login",
        "trackwayMap.state.conn === 'error' && trackwayMap.state.detail.startsWith('login failed')",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(page.eval("trackwayMap.state.connects").await, Some(json!(0)));

    page.log_in(&directus.user_email, &directus.user_password).await;
    page.wait_for("the connection to be live", "trackwayMap.state.conn === 'live'", Duration::from_secs(20)).await;
    let user = page.eval("trackwayMap.state.user").await;
    assert_eq!(user, Some(json!(directus.user_id)), "logged in as the Directus user");
    page.wait_for(
        "dx-1 live and dx-2 refused",
        "trackwayMap.subscriptions.get('device:dx-1')?.status === 'live' \
         && trackwayMap.subscriptions.get('device:dx-2')?.error === 'forbidden'",
        Duration::from_secs(15),
    )
    .await;

    let base = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64 - 60_000;
    let mut redis = redis(&redis_url()).await;
    let (p1, _) = position("dx-1", base, 0, 54.7001, 25.2601, 30, 90);
    let (p2, _) = position("dx-2", base, 0, 54.7101, 25.2701, 30, 90);
    xadd_payloads(&mut redis, &stream, &[p1, p2]).await;
    page.wait_marker_at("dx-1", 54.7001, 25.2601).await;

    // The token is renewed over the open connection before it expires: a later expiry, the same socket.
    let first_expiry = page.eval("trackwayMap.state.expiresAt").await.expect("expiresAt");
    assert!(first_expiry.is_string(), "a Directus token expires: {first_expiry}");
    page.wait_for(
        "the token to be renewed",
        &format!("trackwayMap.state.expiresAt > {first_expiry} && trackwayMap.state.conn === 'live'"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(page.eval("trackwayMap.state.connects").await, Some(json!(1)), "renewed without reconnecting");
    let (p3, _) = position("dx-1", base, 10, 54.7011, 25.2611, 31, 90);
    xadd_payloads(&mut redis, &stream, &[p3]).await;
    page.wait_marker_at("dx-1", 54.7011, 25.2611).await;
    assert_eq!(page.marker("dx-2").await, None, "no position of a device without a grant reaches the page");

    let problems: Vec<&String> = page
        .console
        .iter()
        .filter(|line| {
            line.starts_with("exception") || line.contains("Content Security Policy") || line.contains("CORS")
        })
        .collect();
    assert!(problems.is_empty(), "the page reported problems: {problems:#?}\n{}", page.diagnostics());
    drop(page);
    relay.stop().await.expect("clean stop");
}
