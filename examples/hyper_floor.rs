//! The floor under jwtgate's plain-HTTP cost: the least a hyper 1.x reverse proxy can do
//! per request, with jwtgate's runtime layout (one current-thread runtime per core,
//! SO_REUSEPORT listeners, a per-worker idle list of `hyper::client::conn::http1`
//! connections) and none of its work (no routing, header hygiene, timeouts, request ids,
//! logs or metrics). `bench/instructions.sh hyper-floor` counts its instructions per
//! request next to jwtgate's and nginx's. Not a product: it unwraps on every error.
//!
//! Usage: cargo run --release --example hyper_floor -- LISTEN_ADDR UPSTREAM_ADDR

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

type Idle = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR");
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
                    async move { Ok::<_, Infallible>(forward(&idle, upstream, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
}

async fn forward(idle: &Idle, upstream: SocketAddr, req: Request<Incoming>) -> Response<Incoming> {
    let pooled = idle.borrow_mut().pop();
    let mut tx = match pooled {
        Some(tx) => tx,
        None => {
            let s = tokio::net::TcpStream::connect(upstream).await.unwrap();
            s.set_nodelay(true).unwrap();
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .unwrap();
            tokio::task::spawn_local(conn);
            tx
        }
    };
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    // Back at once: the upstream's bodies here are tiny and already read with the head.
    idle.borrow_mut().push(tx);
    resp
}
