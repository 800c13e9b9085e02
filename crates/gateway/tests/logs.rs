//! What the gateway logs about credentials: never a license key or a bearer token, whatever
//! happens to the request, even at debug level.

mod support;

use telemetry_gateway_proto::v1::RecordEventRequest;
use telemetry_gateway_testkit::client::{events_message, metadata_message};
use telemetry_gateway_testkit::events::{
    licensed_metadata, managed_metadata, simple_event, simple_events,
};
use telemetry_gateway_testkit::fake_sams::{CLIENT_SECRET, FakeSams, TokenGrant};
use telemetry_gateway_testkit::license::{LicenseKeyPair, LicenseSpec, SignatureFormat};

use support::{GatewayProcess, with_sams};

const GOOD_TOKEN: &str = "sams-token-that-must-never-be-logged";
const BAD_TOKEN: &str = "unknown-token-that-must-never-be-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_keys_and_bearer_tokens_never_reach_the_logs() {
    let keys = LicenseKeyPair::shared();
    let license_key = keys.mint(&LicenseSpec::default(), SignatureFormat::SshRsa);
    let sams = FakeSams::start().await;
    sams.grant(GOOD_TOKEN, TokenGrant::events_writer());
    sams.grant(BAD_TOKEN, TokenGrant::active(&["some::other::scope"]));
    let url = sams.url();
    let public_key = keys.public_key_openssh();
    let mut gateway = GatewayProcess::start(&with_sams(
        &url,
        &[
            ("SRC_LOG_LEVEL", "debug"),
            ("TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY", &public_key),
        ],
    ));
    let addr = gateway.address();
    let mut client = telemetry_gateway_testkit::connect(addr)
        .await
        .expect("connect");

    // A licensed stream that is accepted, and one whose key is tampered with.
    let accepted = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![
            metadata_message(licensed_metadata(&license_key)),
            events_message(simple_events("licensed", 3)),
        ],
    )
    .await
    .expect("a valid license is accepted");
    assert_eq!(accepted[0].succeeded_events.len(), 3);
    let tampered = format!("{license_key}x");
    let refused = telemetry_gateway_testkit::record_events(
        &mut client,
        vec![metadata_message(licensed_metadata(&tampered))],
    )
    .await
    .expect_err("a tampered license is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Managed-service calls with a good token, a token without the scope, and a malformed header.
    for (authorization, expected) in [
        (format!("Bearer {GOOD_TOKEN}"), tonic::Code::Ok),
        (format!("Bearer {BAD_TOKEN}"), tonic::Code::PermissionDenied),
        (format!("Token {GOOD_TOKEN}"), tonic::Code::Unauthenticated),
    ] {
        let mut request = tonic::Request::new(RecordEventRequest {
            metadata: Some(managed_metadata("my-service")),
            event: Some(simple_event("managed-1")),
        });
        request
            .metadata_mut()
            .insert("authorization", authorization.parse().expect("ASCII"));
        let code = match client.record_event(request).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        assert_eq!(code, expected, "{authorization}");
    }

    assert!(gateway.terminate().success());
    let lines = gateway.lines();
    assert!(
        lines.iter().any(
            |line| line["message"] == "handling events submission stream for licensed instance"
        ),
        "the licensed stream was logged"
    );
    let secret_bits = [
        license_key.as_str(),
        // The signature and the encoded info alone must not appear either.
        license_key.rsplit('.').next().unwrap_or_default(),
        GOOD_TOKEN,
        BAD_TOKEN,
        CLIENT_SECRET,
    ];
    for line in &lines {
        let text = line.to_string();
        for secret in secret_bits {
            assert!(!text.contains(secret), "a log line holds a secret: {text}");
        }
    }
}
