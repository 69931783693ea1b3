//! EXPERIMENT: `hyper_floor` with the upstream connection driven inside the request's own
//! task (no spawned connection task, no channel hop between tasks): the request future
//! polls the client `Connection` while it waits for the response head, and the response
//! body polls it while it streams. Measures how far below hyper's usual client path a
//! proxy could go. Not a product: it unwraps on every error and never notices an idle
//! upstream connection closing.
//!
//! Usage: cargo run --release --example hyper_floor_inline -- LISTEN_ADDR UPSTREAM_ADDR

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

struct Up {
    tx: SendRequest<Incoming>,
    conn: Connection<TokioIo<tokio::net::TcpStream>, Incoming>,
}

type Idle = Rc<RefCell<Vec<Up>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor_inline LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM_ADDR");
    let workers: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || worker(listen, upstream)))
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

fn worker(listen: SocketAddr, upstream: SocketAddr) {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&listen.into()).unwrap();
    s.listen(1024).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let l = tokio::net::TcpListener::from_std(s.into()).unwrap();
        let idle: Idle = Rc::default();
        loop {
            let (c, _) = l.accept().await.unwrap();
            c.set_nodelay(true).unwrap();
            let idle = idle.clone();
            tokio::task::spawn_local(async move {
                let svc = service_fn(move |req| {
                    let idle = idle.clone();
                    async move { Ok::<_, Infallible>(forward(idle, upstream, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
}

async fn forward(idle: Idle, upstream: SocketAddr, req: Request<Incoming>) -> Response<InlineBody> {
    let pooled = idle.borrow_mut().pop();
    let mut up = match pooled {
        Some(up) => up,
        None => {
            let s = tokio::net::TcpStream::connect(upstream).await.unwrap();
            s.set_nodelay(true).unwrap();
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .unwrap();
            Up { tx, conn }
        }
    };
    std::future::poll_fn(|cx| {
        let _ = Pin::new(&mut up.conn).poll(cx);
        up.tx.poll_ready(cx)
    })
    .await
    .unwrap();
    let mut sent = std::pin::pin!(up.tx.send_request(req));
    let resp = std::future::poll_fn(|cx| {
        let _ = Pin::new(&mut up.conn).poll(cx);
        sent.as_mut().poll(cx)
    })
    .await
    .unwrap();
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        InlineBody {
            body,
            up: Some(up),
            idle,
        },
    )
}

/// The upstream's response body, driving its connection; the connection goes back to the
/// idle list once the body has ended.
struct InlineBody {
    body: Incoming,
    up: Option<Up>,
    idle: Idle,
}

impl Body for InlineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(up) = &mut this.up {
            let _ = Pin::new(&mut up.conn).poll(cx);
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || this.body.is_end_stream() {
            if let Some(up) = this.up.take() {
                this.idle.borrow_mut().push(up);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
