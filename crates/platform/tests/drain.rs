//! A body refused before it is read does not cost the client its connection.
//!
//! The client sends a body far over the limit, reads the 413, and sends its next request on
//! the same connection, as a pooling HTTP client does. Without [`DrainBodyLayer`] the server
//! closes the connection after the 413 without saying so (no `connection: close`), and the
//! next request meets a closed socket: the "connection closed before message completed" that
//! made an end-to-end test flaky.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use faultline_platform::drain::DrainBodyLayer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

fn post_request(body_len: usize) -> Vec<u8> {
    let mut request =
        format!("POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: {body_len}\r\n\r\n")
            .into_bytes();
    request.resize(request.len() + body_len, b'x');
    request
}

/// Reads one response: its status code and body (by `content-length`).
async fn read_response(reader: &mut BufReader<OwnedReadHalf>) -> std::io::Result<(u16, String)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not a status line: {status_line:?}")))?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(std::io::Error::other)?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_body_is_answered_and_the_connection_serves_the_next_request() {
    let app = Router::new()
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .layer(DefaultBodyLimit::max(1024))
        .layer(DrainBodyLayer::default());
    let address = serve(app).await;
    let (reader, mut writer) = TcpStream::connect(address)
        .await
        .expect("connect")
        .into_split();
    let mut reader = BufReader::new(reader);

    for round in 0..3 {
        // The server answers before it has the whole body, so write while reading.
        let oversized = post_request(200_000);
        let sending =
            tokio::spawn(async move { writer.write_all(&oversized).await.map(|()| writer) });
        let (status, _) = read_response(&mut reader).await.expect("the 413");
        assert_eq!(status, 413, "round {round}");
        writer = sending
            .await
            .expect("writer task")
            .unwrap_or_else(|e| panic!("round {round}: the server stopped reading: {e}"));

        writer.write_all(&post_request(5)).await.expect("send");
        let answer = tokio::time::timeout(Duration::from_secs(10), read_response(&mut reader))
            .await
            .expect("an answer in time");
        assert_eq!(
            answer.unwrap_or_else(|e| panic!("round {round}: the connection was closed: {e}")),
            (200, "5".to_owned()),
            "round {round}"
        );
    }
}
