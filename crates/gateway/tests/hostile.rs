//! Hostile senders against the real binary (default file sink, a 64 MiB budget): one test per
//! attack of docs/security.md. Each asserts that the attack is refused or cut short with a status
//! naming the limit, that the process's peak RSS (VmHWM) stays within the budget plus a stated
//! overhead, that the process is alive, and that a normal sender's payloads are acknowledged
//! during the attack and after it. Each prints a `hostile:` line with the figures.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use prost::Message;
use telemetry_gateway_proto::v1::{Event, RecordEventsRequest};
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{simple_events, unlicensed_metadata};
use telemetry_gateway_testkit::http::get;
use telemetry_gateway_testkit::wait::eventually;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use support::GatewayProcess;
use support::exposition::Exposition;

const MIB: usize = 1024 * 1024;
const BUDGET: usize = 64 * MIB;
/// What the process may use beyond the budget: the runtime and its threads, the HTTP/2 state and
/// flow-control windows of the attackers' connections, decoder state, allocator slack.
const OVERHEAD: usize = 64 * MIB;
/// How long each attack runs.
const ATTACK: Duration = Duration::from_secs(4);

fn start() -> GatewayProcess {
    let budget = BUDGET.to_string();
    GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", &budget),
        ("TELEMETRY_GATEWAY_INFLIGHT_WAIT", "1s"),
        ("TELEMETRY_GATEWAY_RECEIVE_GRACE", "2s"),
        ("TELEMETRY_GATEWAY_STREAM_IDLE_TIMEOUT", "2s"),
        ("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", "1s"),
    ])
}

/// The peak resident set size of `pid`, from /proc.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// Sends one normal payload (100 events) on a fresh connection; returns how long it took.
async fn normal_send(addr: SocketAddr, round: usize) -> Duration {
    let started = Instant::now();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    let prefix = format!("normal-{round}");
    let responses = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(unlicensed_metadata("normal")),
            events_message(simple_events(&prefix, 100)),
        ],
    )
    .await
    .expect("a normal sender is served during and after the attack");
    assert_eq!(responses[0].succeeded_events.len(), 100);
    started.elapsed()
}

/// Runs `attackers` copies of `attack` in a loop for [`ATTACK`] while a normal sender sends a
/// payload every 200 ms, then checks memory, liveness, readiness if asked, and a normal payload
/// after the attack. `attack` gets the address and the attacker's number, and asserts how its
/// attempt ended.
async fn under_attack<F, Fut>(name: &str, attackers: usize, ready_stays_200: bool, attack: F)
where
    F: Fn(SocketAddr, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut gateway = start();
    let addr = gateway.address();
    let baseline = peak_rss(gateway.pid());
    let until = Instant::now() + ATTACK;
    let mut tasks = Vec::new();
    for attacker in 0..attackers {
        let attack = attack.clone();
        tasks.push(tokio::spawn(async move {
            let mut rounds = 0;
            while Instant::now() < until {
                attack(addr, attacker).await;
                rounds += 1;
            }
            rounds
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waits = Vec::new();
    let mut round = 0;
    while Instant::now() < until {
        waits.push(normal_send(addr, round).await);
        round += 1;
        if ready_stays_200 {
            let ready = get(addr, "/-/ready", None).await.expect("served");
            assert_eq!(ready.status, 200, "{name}: {}", ready.body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut rounds = 0;
    for task in tasks {
        rounds += task
            .await
            .expect("the attacker asserts how its attempt ended");
    }
    normal_send(addr, 10_000).await;
    let peak = peak_rss(gateway.pid());
    let max_wait = waits.iter().max().copied().unwrap_or_default();
    println!(
        "hostile: {name}: {rounds} attempts by {attackers}; baseline RSS {:.1} MiB, peak {:.1} MiB \
         (limit {:.1}); normal sender: {} payloads, longest wait {} ms",
        mib(baseline),
        mib(peak),
        mib(BUDGET + OVERHEAD),
        waits.len(),
        max_wait.as_millis()
    );
    assert!(
        peak <= BUDGET + OVERHEAD,
        "{name}: peak RSS {:.1} MiB exceeds the budget plus overhead {:.1} MiB",
        mib(peak),
        mib(BUDGET + OVERHEAD)
    );
    assert!(
        gateway.wait_exit(Duration::ZERO).is_none(),
        "{name}: the gateway died"
    );
    gateway.terminate();
}

/// Sends `messages` on one stream and returns how it ended.
async fn send_expecting_error(
    addr: SocketAddr,
    messages: Vec<RecordEventsRequest>,
) -> tonic::Status {
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");
    match telemetry_gateway_testkit::record_events(&mut client, messages).await {
        Ok(responses) => panic!("the attack was acknowledged: {responses:?}"),
        Err(status) => status,
    }
}

fn assert_refused(status: &tonic::Status, code: Code, setting: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(setting), "{status:?}");
}

/// A framed, uncompressed gRPC message.
fn framed(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend(bytes);
    framed
}

/// A `RecordEvents` call whose request body the test writes frame by frame.
struct RawStream {
    frames: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    ended: tokio::task::JoinHandle<(String, String)>,
}

type RawClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>,
>;

/// An HTTP/2 client: one connection, shared by its streams.
fn raw_client() -> RawClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

impl RawStream {
    async fn open(client: &RawClient, addr: SocketAddr, encoding: Option<&str>) -> RawStream {
        use http_body_util::BodyExt;
        let (frames, receiver) = mpsc::channel(4);
        let mut request = http::Request::post(format!(
            "http://{addr}/telemetrygateway.v1.TelemeteryGatewayService/RecordEvents"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        let request = request
            .body(http_body_util::StreamBody::new(ReceiverStream::new(
                receiver,
            )))
            .expect("a valid request");
        let client = client.clone();
        let ended = tokio::spawn(async move {
            let response = client.request(request).await.expect("the server answers");
            let (parts, body) = response.into_parts();
            let header = |map: &http::HeaderMap, name: &str| {
                map.get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
                    .unwrap_or_default()
            };
            if parts.headers.contains_key("grpc-status") {
                return (
                    header(&parts.headers, "grpc-status"),
                    header(&parts.headers, "grpc-message"),
                );
            }
            let collected = body.collect().await.expect("the response ends");
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (
                header(&trailers, "grpc-status"),
                header(&trailers, "grpc-message"),
            )
        });
        RawStream { frames, ended }
    }

    /// Sends `bytes`; false once the server stopped reading.
    async fn send(&self, bytes: Vec<u8>) -> bool {
        self.frames
            .send(Ok(Frame::data(Bytes::from(bytes))))
            .await
            .is_ok()
    }

    /// How the server ended the call: its `grpc-status` and `grpc-message`.
    async fn ended(self) -> (String, String) {
        let RawStream { frames, ended } = self;
        let result = ended.await.expect("the call task");
        drop(frames);
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_million_empty_events_in_one_mb_are_refused() {
    under_attack(
        "1 MB of 500,000 empty events",
        2,
        false,
        |addr, i| async move {
            let status = send_expecting_error(
                addr,
                vec![
                    metadata_message(unlicensed_metadata(&format!("attacker-{i}"))),
                    events_message(vec![Event::default(); 500_000]),
                ],
            )
            .await;
            assert_refused(
                &status,
                Code::ResourceExhausted,
                "TELEMETRY_GATEWAY_MAX_EVENTS_PER_PAYLOAD",
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mb_of_empty_events_gzip_compressed_are_refused() {
    // Compressed once: ~20 KB on the wire.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(&events_message(vec![Event::default(); 2_000_000]).encode_to_vec())
        .expect("in memory");
    let compressed = encoder.finish().expect("in memory");
    let metadata = framed(&metadata_message(unlicensed_metadata("attacker")));
    under_attack("4 MB of empty events, gzip", 2, false, move |addr, _| {
        let (metadata, compressed) = (metadata.clone(), compressed.clone());
        async move {
            let client = raw_client();
            let stream = RawStream::open(&client, addr, Some("gzip")).await;
            stream.send(metadata).await;
            let mut message = vec![1u8];
            message.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
            message.extend(compressed);
            stream.send(message).await;
            let (status, message) = stream.ended().await;
            assert_eq!(status, "8", "ResourceExhausted: {message}");
            assert!(message.contains("MAX_EVENTS_PER_PAYLOAD"), "{message}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_external_url_in_the_metadata_is_refused() {
    under_attack(
        "1 MB external_url then 2,000 tiny events",
        2,
        false,
        |addr, i| async move {
            let mut metadata = unlicensed_metadata(&format!("attacker-{i}"));
            if let Some(telemetry_gateway_proto::v1::identifier::Identifier::UnlicensedInstance(
                unlicensed,
            )) = metadata
                .identifier
                .as_mut()
                .and_then(|identifier| identifier.identifier.as_mut())
            {
                unlicensed.external_url = "x".repeat(MIB);
            }
            let status = send_expecting_error(
                addr,
                vec![
                    metadata_message(metadata),
                    events_message(simple_events("tiny", 2_000)),
                ],
            )
            .await;
            assert_refused(
                &status,
                Code::ResourceExhausted,
                "TELEMETRY_GATEWAY_MAX_METADATA_BYTES",
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_just_under_its_limit_is_charged_for_every_event() {
    under_attack(
        "60 KB external_url then 2,000 tiny events",
        2,
        false,
        |addr, i| async move {
            let mut metadata = unlicensed_metadata(&format!("attacker-{i}"));
            if let Some(telemetry_gateway_proto::v1::identifier::Identifier::UnlicensedInstance(
                unlicensed,
            )) = metadata
                .identifier
                .as_mut()
                .and_then(|identifier| identifier.identifier.as_mut())
            {
                unlicensed.external_url = "x".repeat(60 * 1024);
            }
            // 2,000 × 60 KB of rendered metadata: more than a connection may hold.
            let status = send_expecting_error(
                addr,
                vec![
                    metadata_message(metadata),
                    events_message(simple_events("tiny", 2_000)),
                ],
            )
            .await;
            assert_refused(
                &status,
                Code::ResourceExhausted,
                "TELEMETRY_GATEWAY_CONNECTION_SHARE_PERCENT",
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_large_message_trickled_a_byte_at_a_time_is_cut_and_freed() {
    let metadata = framed(&metadata_message(unlicensed_metadata("trickler")));
    // Three streams on one connection: one is admitted (6 MiB of the 16 MiB receive part, within
    // the connection's half of it), the others are refused for the connection's share, and the
    // admitted one is cut once it falls behind the minimum rate; /-/ready stays 200.
    under_attack(
        "6 MiB declared, 1 byte every 500 ms",
        1,
        true,
        move |addr, _| {
            let metadata = metadata.clone();
            async move {
                let client = raw_client();
                let mut streams = Vec::new();
                for _ in 0..3 {
                    let stream = RawStream::open(&client, addr, None).await;
                    stream.send(metadata.clone()).await;
                    let mut header = vec![0u8];
                    header.extend_from_slice(&(6 * MIB as u32).to_be_bytes());
                    stream.send(header).await;
                    streams.push(stream);
                }
                for _ in 0..12 {
                    for stream in &streams {
                        // An unknown varint field's tag and value, a byte at a time.
                        stream.send(vec![0x78]).await;
                        stream.send(vec![0x01]).await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let mut statuses = Vec::new();
                for stream in streams {
                    statuses.push(stream.ended().await);
                }
                assert!(
                    statuses
                        .iter()
                        .any(|(status, m)| status == "4"
                            && m.contains("MIN_RECEIVE_BYTES_PER_SECOND")),
                    "{statuses:?}"
                );
                assert!(
                    statuses
                        .iter()
                        .all(|(status, _)| status == "4" || status == "8"),
                    "{statuses:?}"
                );
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_sixty_mib_message_is_refused_at_its_header() {
    let metadata = framed(&metadata_message(unlicensed_metadata("declarer")));
    under_attack("60 MiB declared", 2, true, move |addr, _| {
        let metadata = metadata.clone();
        async move {
            let client = raw_client();
            let stream = RawStream::open(&client, addr, None).await;
            stream.send(metadata).await;
            let mut header = vec![0u8];
            header.extend_from_slice(&(60 * MIB as u32).to_be_bytes());
            stream.send(header).await;
            let (status, message) = stream.ended().await;
            assert_eq!(status, "8", "ResourceExhausted: {message}");
            assert!(message.contains("CONNECTION_SHARE_PERCENT"), "{message}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_with_large_metadata_are_refused_or_closed() {
    under_attack(
        "20 idle streams with 4-8 MB / 60 KB metadata",
        1,
        false,
        |addr, _| async move {
            let mut client = telemetry_gateway_testkit::connect(addr)
                .await
                .expect("connect");
            let mut calls = Vec::new();
            let mut senders = Vec::new();
            for i in 0..20 {
                let mut metadata = unlicensed_metadata(&format!("idle-{i}"));
                metadata.request_id = "r".repeat(if i % 2 == 0 { 4 * MIB } else { 60 * 1024 });
                let (sender, receiver) = mpsc::channel(1);
                sender.send(metadata_message(metadata)).await.expect("open");
                senders.push(sender);
                let mut client = client.clone();
                calls.push(tokio::spawn(async move {
                    match client.record_events(ReceiverStream::new(receiver)).await {
                        Err(status) => status,
                        Ok(response) => {
                            let mut inbound = response.into_inner();
                            loop {
                                match inbound.message().await {
                                    Ok(Some(_)) => continue,
                                    Ok(None) => panic!("an idle stream ended without an error"),
                                    Err(status) => break status,
                                }
                            }
                        }
                    }
                }));
            }
            let _ = &mut client;
            for (i, call) in calls.into_iter().enumerate() {
                let status = call.await.expect("call task");
                if i % 2 == 0 {
                    assert_refused(
                        &status,
                        Code::ResourceExhausted,
                        "TELEMETRY_GATEWAY_MAX_METADATA_BYTES",
                    );
                } else {
                    assert_refused(
                        &status,
                        Code::DeadlineExceeded,
                        "TELEMETRY_GATEWAY_STREAM_IDLE_TIMEOUT",
                    );
                }
            }
            drop(senders);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_license_key_is_refused_before_it_is_parsed() {
    under_attack(
        "12 MB / 20 KB license key",
        2,
        false,
        |addr, i| async move {
            let key_len = if i == 0 { 12 * MIB } else { 20 * 1024 };
            let metadata =
                telemetry_gateway_testkit::events::licensed_metadata(&"k".repeat(key_len));
            let status = send_expecting_error(addr, vec![metadata_message(metadata)]).await;
            if i == 0 {
                assert_refused(
                    &status,
                    Code::ResourceExhausted,
                    "TELEMETRY_GATEWAY_MAX_METADATA_BYTES",
                );
            } else {
                assert_refused(
                    &status,
                    Code::InvalidArgument,
                    "TELEMETRY_GATEWAY_MAX_LICENSE_KEY_BYTES",
                );
            }
        },
    )
    .await;
}

/// `count` valid events carrying about `size` bytes of private metadata each.
fn padded_events(prefix: &str, count: usize, size: usize) -> Vec<Event> {
    simple_events(prefix, count)
        .into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            let padding: String = (0..size)
                .map(|j| char::from(b'a' + ((i * 7 + j * 13) % 26) as u8))
                .collect();
            event
                .parameters
                .get_or_insert_with(Default::default)
                .private_metadata = Some(prost_types::Struct {
                fields: [(
                    "context".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(padding)),
                    },
                )]
                .into(),
            });
            event
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_large_payloads_on_one_stream_are_both_acknowledged() {
    // 5 MB payloads whose cost is most of what one connection may hold (24 MiB).
    under_attack(
        "two 5 MB payloads on one stream",
        1,
        false,
        |addr, i| async move {
            let mut client = telemetry_gateway_testkit::connect(addr)
                .await
                .expect("connect");
            let responses = telemetry_gateway_testkit::record_events(
                &mut client,
                vec![
                    metadata_message(unlicensed_metadata(&format!("large-{i}"))),
                    events_message(padded_events("a", 500, 10_000)),
                    events_message(padded_events("b", 500, 10_000)),
                ],
            )
            .await
            .expect("both payloads are admitted in turn");
            assert_eq!(responses.len(), 2);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mb_payloads_do_not_hold_up_other_senders() {
    under_attack(
        "4 MB payloads of 2,000 events",
        2,
        false,
        |addr, i| async move {
            let mut client = telemetry_gateway_testkit::connect(addr)
                .await
                .expect("connect");
            let responses = telemetry_gateway_testkit::record_events(
                &mut client,
                vec![
                    metadata_message(unlicensed_metadata(&format!("cpu-{i}"))),
                    events_message(padded_events("cpu", 2_000, 2_000)),
                ],
            )
            .await;
            // Admitted and acknowledged, or refused for room while the other attacker's is held.
            match responses {
                Ok(responses) => assert_eq!(responses[0].succeeded_events.len(), 2_000),
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ninety_mib_gzip_bomb_is_refused_without_decompressing_it_into_memory() {
    // One event whose ID is 90 MiB of one letter: about 90 KB compressed.
    let bomb = events_message(vec![Event {
        id: "a".repeat(90 * MIB),
        ..Event::default()
    }])
    .encode_to_vec();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&bomb).expect("in memory");
    drop(bomb);
    let compressed = encoder.finish().expect("in memory");
    let metadata = framed(&metadata_message(unlicensed_metadata("bomber")));
    under_attack("90 MiB gzip bomb", 2, false, move |addr, _| {
        let (metadata, compressed) = (metadata.clone(), compressed.clone());
        async move {
            let client = raw_client();
            let stream = RawStream::open(&client, addr, Some("gzip")).await;
            stream.send(metadata).await;
            let mut message = vec![1u8];
            message.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
            message.extend(compressed);
            stream.send(message).await;
            let (status, message) = stream.ended().await;
            assert_eq!(status, "8", "ResourceExhausted: {message}");
            assert!(
                message.contains("GRPC_MAX_RECEIVE_MESSAGE_BYTES")
                    || message.contains("CONNECTION_SHARE_PERCENT"),
                "{message}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_on_one_connection_are_bounded() {
    under_attack(
        "1,000 streams on one connection",
        1,
        false,
        |addr, _| async move {
            let client = telemetry_gateway_testkit::connect(addr)
                .await
                .expect("connect");
            let mut calls = Vec::new();
            for i in 0..1_000 {
                let mut client = client.clone();
                calls.push(tokio::spawn(async move {
                    let (sender, receiver) = mpsc::channel(1);
                    sender
                        .send(metadata_message(unlicensed_metadata(&format!("many-{i}"))))
                        .await
                        .expect("open");
                    let result = match client.record_events(ReceiverStream::new(receiver)).await {
                        Err(status) => Err(status),
                        Ok(response) => {
                            let mut inbound = response.into_inner();
                            inbound.message().await.map(|_| ())
                        }
                    };
                    drop(sender);
                    result
                }));
            }
            let mut idle = 0;
            for call in calls {
                if let Err(status) = call.await.expect("call task")
                    && status.code() == Code::DeadlineExceeded
                {
                    idle += 1;
                }
            }
            assert!(idle > 0, "the idle streams were closed by the gateway");
        },
    )
    .await;
}

/// Connections that never send a byte are closed after the opening timeout, and while they fill
/// the connection limit a normal sender waits in the listen backlog rather than being refused or
/// starved of file descriptors (a hostile probe held 20,000 such connections for good before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_the_connection_limit_queues_others() {
    let budget = BUDGET.to_string();
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", &budget),
        ("TELEMETRY_GATEWAY_MAX_CONNECTIONS", "50"),
        ("TELEMETRY_GATEWAY_CONNECTION_OPENING_TIMEOUT", "1s"),
        ("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", "1s"),
    ]);
    let addr = gateway.address();
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // Behind 200 silent connections, 50 at a time for a second each.
    let waited = tokio::time::timeout(Duration::from_secs(30), normal_send(addr, 0))
        .await
        .expect("the normal sender gets through while the silent connections time out");
    println!(
        "hostile: 200 silent connections, 50 at most open: a normal payload acknowledged after {} ms",
        waited.as_millis()
    );
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(15)).contains(&started.elapsed()),
        "the limit held the normal sender back behind the silent connections, not for good: {:?}",
        started.elapsed()
    );
    for mut connection in silent {
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut connection, &mut byte),
        )
        .await
        .expect("closed by the gateway, not left open");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    // Every slot comes back: only the scrape's own connection stays open. The normal sender's
    // connection closes in the background after its client is dropped, so the gateway may see
    // it still open for a moment; scrape until it has gone, for at most five seconds.
    let metrics = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let response = get(addr, "/metrics", None).await.expect("served");
            let metrics = Exposition::parse(&response.body);
            let open = metrics.family("telemetry_gateway_connections_open");
            if open.get("") == Some(&1.0) {
                Ok(metrics)
            } else {
                Err(format!("connections open: {open:?}"))
            }
        },
    )
    .await;
    metrics.assert_family("telemetry_gateway_connections_open", &[("", 1.0)]);
    // All 200 cut for their silence, none for their address.
    metrics.assert_family(
        "telemetry_gateway_connections_closed_total",
        &[("reason=\"opening_timeout\"", 200.0)],
    );
    assert!(
        gateway.wait_exit(Duration::ZERO).is_none(),
        "the gateway died"
    );
    gateway.terminate();
}

/// An HTTP/2 connection that opens no stream is asked to go away (`GOAWAY`) and closed once it
/// reaches its maximum age, however well it answers: without the age it was kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_sent_away_at_its_maximum_age() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const GOAWAY: u8 = 0x7;
    let mut gateway = GatewayProcess::start(&[("TELEMETRY_GATEWAY_MAX_CONNECTION_AGE", "1s")]);
    let addr = gateway.address();
    // Before the connect: the age counts from the accept, which may come first.
    let started = Instant::now();
    let mut connection = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The client preface and an empty SETTINGS frame; then nothing.
    connection
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("send");
    // Frames until a GOAWAY (a client that answers its PING is then closed at once; one that
    // does not, by the keepalive or at the grace after the age, whichever comes first).
    let mut received = Vec::new();
    let goaway = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = connection.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed without a GOAWAY: {received:?}");
            received.extend_from_slice(&chunk[..n]);
            let mut rest = &received[..];
            while rest.len() >= 9 {
                let len =
                    usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
                if rest[3] == GOAWAY {
                    return started.elapsed();
                }
                rest = &rest[(9 + len).min(rest.len())..];
            }
        }
    })
    .await
    .expect("a GOAWAY within 10 s");
    assert!(goaway >= Duration::from_millis(900), "sent at {goaway:?}");
    drop(connection);
    assert!(gateway.terminate().success());
}

/// A stream that never ends (a gRPC health `Watch`) does not keep its connection past the maximum
/// age: the connection is closed, the stream with it, once the grace after the age is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_ends_with_its_connection_at_the_maximum_age_and_grace() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_MAX_CONNECTION_AGE", "1s"),
        ("TELEMETRY_GATEWAY_MAX_CONNECTION_AGE_GRACE", "1s"),
    ]);
    let addr = gateway.address();
    // Before the connect: the age counts from the accept, which may come first.
    let started = Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("watching")
        .into_inner();
    let first = watch.message().await.expect("the first status");
    assert!(first.is_some(), "the watch starts with the current status");
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the watch ends within 10 s");
    let elapsed = started.elapsed();
    assert!(ended.is_err(), "cut with its connection: {ended:?}");
    assert!(elapsed >= Duration::from_millis(1800), "cut at {elapsed:?}");

    let response = get(addr, "/metrics", None).await.expect("served");
    Exposition::parse(&response.body).assert_family(
        "telemetry_gateway_connections_closed_total",
        &[("reason=\"max_age\"", 1.0)],
    );
    assert!(gateway.terminate().success());
}

/// Health and reflection calls, outside the memory budget, are limited in all: beyond 256 in
/// progress (here health `Watch` streams held open from three connections) a call is refused at
/// once, while health checks, which have places of their own, are still answered; and the room
/// comes back when the calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_calls_in_progress_are_limited_across_connections() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut gateway = GatewayProcess::start(&[]);
    let addr = gateway.address();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        clients.push(HealthClient::new(channel));
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..300 {
        match clients[i % 3].watch(HealthCheckRequest::default()).await {
            Ok(watch) => held.push(watch.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (256, 44));
    clients[0]
        .check(HealthCheckRequest::default())
        .await
        .expect("a health check is answered while the watches hold every other place");
    held.clear();
    // The watches that ended gave their room back (the gateway sees the streams reset shortly).
    let client = clients[1].clone();
    eventually(Duration::from_secs(10), Duration::from_millis(50), || {
        let mut client = client.clone();
        async move {
            match client.watch(HealthCheckRequest::default()).await {
                Ok(_) => Ok(()),
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    Err(format!(
                        "a watch still refused after the watches ended: {status:?}"
                    ))
                }
            }
        }
    })
    .await;
    assert!(gateway.terminate().success());
}

/// The flow-control window term of the memory bound (docs/security.md, "The memory bound"): a
/// connection whose `RecordEvents` stream waits for room in the budget makes the gateway hold
/// about its 1 MiB window of unread bytes, however the sender frames them. Each attacker sends
/// its window as 1-byte and 256-byte DATA frames (within h2's budget for small frames), each
/// followed by an 8,000-byte frame of an unknown type (ignored, outside flow control), so that
/// every DATA payload lands in a read buffer of its own; the budget's receive part is held by
/// two slow senders meanwhile. Before h2 copied DATA payloads out of its read buffer
/// (vendor/h2/PATCHED.md) each payload kept its buffer: 530 MiB for these 10 connections.
/// Peak RSS must stay within the logged bound and the overhead, and a normal sender is served
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_windows_framed_to_pin_read_buffers_stay_within_the_memory_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SMALL_BUDGET: usize = 16 * MIB;
    let window = telemetry_gateway_server::ConnectionLimits::default().window_bytes as usize;
    const ATTACKERS: usize = 10;
    // The holders, the attackers, the normal sender and a spare.
    const MAX_CONNECTIONS: usize = ATTACKERS + 4;
    fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }
    let budget = SMALL_BUDGET.to_string();
    let max_connections = MAX_CONNECTIONS.to_string();
    let mut gateway = GatewayProcess::start(&[
        ("TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES", &budget),
        ("TELEMETRY_GATEWAY_MAX_CONNECTIONS", &max_connections),
        ("TELEMETRY_GATEWAY_INFLIGHT_WAIT", "20s"),
        ("TELEMETRY_GATEWAY_RECEIVE_GRACE", "30s"),
        ("TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT", "1s"),
    ]);
    let addr = gateway.address();
    let baseline = peak_rss(gateway.pid());
    // Two connections each hold half the receive part (a quarter of the budget) with a declared
    // message they do not send: every other stream's next message waits for room.
    let metadata = framed(&metadata_message(unlicensed_metadata("holder")));
    let mut holders = Vec::new();
    for _ in 0..2 {
        let client = raw_client();
        let stream = RawStream::open(&client, addr, None).await;
        stream.send(metadata.clone()).await;
        let mut header = vec![0u8];
        header.extend_from_slice(&((SMALL_BUDGET / 8) as u32).to_be_bytes());
        stream.send(header).await;
        holders.push((client, stream));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/telemetrygateway.v1.TelemeteryGatewayService/RecordEvents",
        ),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // A literal field without indexing, new name, no Huffman coding.
        headers.extend_from_slice(&[0, name.len() as u8]);
        headers.extend_from_slice(name.as_bytes());
        headers.push(value.len() as u8);
        headers.extend_from_slice(value.as_bytes());
    }
    let filler = h2_frame(0xee, 0, 0, &[0u8; 8000]);
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let connection = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = connection.into_split();
        // Read (and drop) whatever the gateway sends, so that it never waits on its writes.
        let drain = tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while matches!(reader.read(&mut chunk).await, Ok(n) if n > 0) {}
        });
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        opening.extend(h2_frame(0x4, 0, 0, &[]));
        writer.write_all(&opening).await.expect("send");
        // The gateway's SETTINGS and connection WINDOW_UPDATE (1 MiB each way) come first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Acknowledging its SETTINGS puts its 1 MiB stream window in force.
        let mut sent = h2_frame(0x4, 0x1, 0, &[]);
        sent.extend(h2_frame(0x1, 0x4, 1, &headers));
        let mut message = framed(&metadata_message(unlicensed_metadata("attacker")));
        message.push(0);
        message.extend_from_slice(&(MIB as u32).to_be_bytes());
        sent.extend(h2_frame(0x0, 0, 1, &message));
        let mut left = window - message.len() - 4096;
        for round in 0.. {
            let size = if round < 2_000 { 1 } else { 256 };
            if left < size {
                break;
            }
            left -= size;
            sent.extend(h2_frame(0x0, 0, 1, &vec![b'x'; size]));
            sent.extend_from_slice(&filler);
        }
        writer.write_all(&sent).await.expect("send");
        attackers.push((writer, drain));
    }
    // Until the gateway has read it all: the peak stops growing.
    let mut peak = peak_rss(gateway.pid());
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = peak_rss(gateway.pid());
        if now == peak {
            break;
        }
        peak = now;
    }
    let limits = telemetry_gateway_server::ConnectionLimits {
        max_connections: MAX_CONNECTIONS,
        ..Default::default()
    };
    let bound = telemetry_gateway_server::memory_bound(SMALL_BUDGET, 100, &limits).expect("bounded")
        as usize;
    println!(
        "hostile: {ATTACKERS} unread windows framed to pin read buffers: baseline RSS {:.1} MiB, \
         peak {:.1} MiB (bound {:.1} + overhead {:.1})",
        mib(baseline),
        mib(peak),
        mib(bound),
        mib(OVERHEAD)
    );
    drop(attackers);
    drop(holders);
    normal_send(addr, 0).await;
    assert!(
        peak <= bound + OVERHEAD,
        "peak RSS {:.1} MiB exceeds the memory bound plus overhead {:.1} MiB",
        mib(peak),
        mib(bound + OVERHEAD)
    );
    assert!(
        gateway.wait_exit(Duration::ZERO).is_none(),
        "the gateway died"
    );
    assert!(gateway.terminate().success());
}
