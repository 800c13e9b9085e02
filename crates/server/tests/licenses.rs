//! Licensed-instance streams: every license case, over a real socket.

mod support;

use std::sync::Arc;

use telemetry_gateway_server::EventPolicy;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{licensed_metadata, simple_events};
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};
use telemetry_gateway_testkit::{RecordingSink, record_events};
use tonic::{Code, Status};

use support::{Setup, TestGateway, payload_json};

async fn send_with_key(gateway: &TestGateway, key: &str) -> Result<Vec<String>, Status> {
    let responses = record_events(
        &mut gateway.client().await,
        vec![
            metadata_message(licensed_metadata(key)),
            events_message(simple_events("l", 2)),
        ],
    )
    .await?;
    Ok(responses
        .into_iter()
        .flat_map(|r| r.succeeded_events)
        .collect())
}

fn assert_invalid_license(result: Result<Vec<String>, Status>) {
    let status = result.expect_err("the key must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("invalid license_key: "),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn valid_keys_in_every_signature_format_are_accepted() {
    let sink = Arc::new(RecordingSink::new());
    let gateway = TestGateway::start(sink.clone()).await;
    for format in [
        SignatureFormat::SshRsa,
        SignatureFormat::RsaSha256,
        SignatureFormat::RsaSha512,
    ] {
        let key = LicenseKeyPair::shared().mint(&LicenseSpec::default(), format);
        let acknowledged = send_with_key(&gateway, &key).await.expect("a valid key");
        assert_eq!(acknowledged, vec!["l-0", "l-1"], "{format:?}");
    }
    let published = payload_json(&sink.delivered()[0]);
    assert_eq!(
        published["metadata"]["identifier"]["licensedInstance"]["instanceId"],
        "instance-licensed"
    );
    assert_eq!(
        sink.delivered()[0].attributes["publisher.source"],
        "licensed_instance"
    );
}

#[tokio::test]
async fn whitespace_inside_a_key_is_ignored() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let key = LicenseKeyPair::shared().mint(&LicenseSpec::default(), SignatureFormat::SshRsa);
    let wrapped: String = key
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            if i % 40 == 39 {
                vec![c, '\n', ' ', '\t']
            } else {
                vec![c]
            }
        })
        .collect();
    assert_eq!(
        send_with_key(&gateway, &wrapped)
            .await
            .expect("accepted")
            .len(),
        2
    );
}

#[tokio::test]
async fn tampered_info_is_refused() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let key = LicenseKeyPair::shared().mint_with(
        &LicenseSpec::default(),
        SignatureFormat::SshRsa,
        |envelope| {
            let tampered = LicenseSpec {
                user_count: 1_000_000,
                ..LicenseSpec::default()
            };
            use base64::Engine as _;
            envelope["info"] = base64::engine::general_purpose::STANDARD
                .encode(tampered.info_json())
                .into();
        },
    );
    assert_invalid_license(send_with_key(&gateway, &key).await);
}

#[tokio::test]
async fn a_key_signed_by_another_key_pair_is_refused() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let other = LicenseKeyPair::generate();
    let key = other.mint(&LicenseSpec::default(), SignatureFormat::RsaSha512);
    assert_invalid_license(send_with_key(&gateway, &key).await);
}

#[tokio::test]
async fn malformed_keys_are_refused_cleanly() {
    let gateway = TestGateway::start(Arc::new(RecordingSink::new())).await;
    let valid = LicenseKeyPair::shared().mint(&LicenseSpec::default(), SignatureFormat::SshRsa);
    let no_sig = LicenseKeyPair::shared().mint_with(
        &LicenseSpec::default(),
        SignatureFormat::SshRsa,
        |envelope| {
            envelope.as_object_mut().expect("an object").remove("sig");
        },
    );
    let null_sig = LicenseKeyPair::shared().mint_with(
        &LicenseSpec::default(),
        SignatureFormat::SshRsa,
        |envelope| {
            envelope["sig"] = serde_json::Value::Null;
        },
    );
    let cases = [
        ("empty", String::new()),
        ("garbage", "not a license key!".to_string()),
        ("padding", format!("{valid}==")),
        ("truncated", valid[..valid.len() / 2].to_string()),
        ("missing sig", no_sig),
        ("null sig", null_sig),
    ];
    for (name, key) in cases {
        let result = send_with_key(&gateway, &key).await;
        let status = result.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with("invalid license_key: "),
            "{name}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn the_production_key_refuses_test_keys() {
    let gateway = TestGateway::start_with(Setup {
        licenses: telemetry_gateway_auth::LicenseVerifier::production(),
        ..Setup::default()
    })
    .await;
    let key = LicenseKeyPair::shared().mint(&LicenseSpec::default(), SignatureFormat::SshRsa);
    assert_invalid_license(send_with_key(&gateway, &key).await);
}

#[tokio::test]
async fn expired_licenses_are_accepted_unless_refusal_is_enabled() {
    let expired = LicenseSpec {
        expires_at: chrono::Utc::now() - chrono::Duration::days(1),
        ..LicenseSpec::default()
    };
    let key = LicenseKeyPair::shared().mint(&expired, SignatureFormat::SshRsa);

    let lenient = TestGateway::start(Arc::new(RecordingSink::new())).await;
    assert_eq!(
        send_with_key(&lenient, &key)
            .await
            .expect("accepted: expiry is not judged by default (docs/compatibility.md §5)")
            .len(),
        2
    );

    let strict = TestGateway::start_with(Setup {
        policy: EventPolicy {
            reject_expired_licenses: true,
            ..EventPolicy::default()
        },
        ..Setup::default()
    })
    .await;
    let status = send_with_key(&strict, &key).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("invalid license_key: license expired at "),
        "{}",
        status.message()
    );
}
