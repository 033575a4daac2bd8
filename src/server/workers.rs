//! The gRPC worker threads: each is a single-threaded event loop that serves the
//! connections handed to it from start to end, and an acceptor that hands each new
//! connection to the worker serving the fewest.
//!
//! Why not one multi-threaded runtime: there, the task that completes an answer wakes
//! its connection's task, which runs at once on the same thread (tokio's LIFO slot) or
//! on the other, and writes that one answer: a system call per answer. Within one event
//! loop, a batch of Redis replies completes a batch of answers, and the connection
//! writes them together (profiled: less than half the CPU per check, see BENCHMARKS.md).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// One worker's inbox, and how many connections it is serving.
pub struct Worker {
    connections: mpsc::UnboundedSender<std::net::TcpStream>,
    load: Arc<AtomicUsize>,
}

/// What a worker thread serves: its connections, as the server's `incoming` stream.
pub struct Inbox {
    connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    load: Arc<AtomicUsize>,
}

/// A worker and its inbox.
pub fn worker() -> (Worker, Inbox) {
    let (connections, inbox) = mpsc::unbounded_channel();
    let load = Arc::new(AtomicUsize::new(0));
    (Worker { connections, load: load.clone() }, Inbox { connections: inbox, load })
}

impl Inbox {
    /// The connections as a stream for `serve_with_incoming`, each registered with the
    /// event loop of the thread that polls it; the stream ends when the acceptor stops.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<Counted>> {
        let load = self.load;
        UnboundedReceiverStream::new(self.connections).map(move |stream| {
            let load = Guard(load.clone());
            stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
                .map(|stream| Counted { stream, _load: load })
        })
    }
}

/// Accepts connections until `stop` resolves, giving each to the worker serving the
/// fewest (the first such, so that ties go round the workers in order of start).
/// Accept errors (out of file descriptors) are logged and accepting goes on after a
/// pause. A worker that has stopped is taken out of the rotation; returns
/// [`NoWorkers`] if none is left.
pub async fn accept(
    listener: TcpListener,
    mut workers: Vec<Worker>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), NoWorkers> {
    tokio::pin!(stop);
    let mut next = 0;
    loop {
        if workers.is_empty() {
            return Err(NoWorkers);
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a gRPC connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // With Nagle on, an answer written while an earlier one is unacknowledged waits for
        // the client's delayed ACK, 40 ms. A socket that fails this is already gone.
        let Ok(mut stream) = stream.set_nodelay(true).and_then(|()| stream.into_std()) else { continue };
        while !workers.is_empty() {
            let fewest = (0..workers.len())
                .map(|i| (next + i) % workers.len())
                .min_by_key(|&i| workers[i].load.load(Ordering::Relaxed))
                .unwrap_or(0);
            workers[fewest].load.fetch_add(1, Ordering::Relaxed);
            match workers[fewest].connections.send(stream) {
                Ok(()) => {
                    next = (fewest + 1) % workers.len();
                    break;
                }
                Err(returned) => {
                    // That worker's thread has ended: offer the connection to another.
                    tracing::error!("a gRPC worker thread has stopped; serving on the others");
                    workers.swap_remove(fewest);
                    stream = returned.0;
                    next = 0;
                }
            }
        }
    }
}

/// Every worker thread has stopped.
#[derive(Debug, thiserror::Error)]
#[error("every gRPC worker thread has stopped")]
pub struct NoWorkers;

/// Counts a connection out of its worker's load when it closes.
struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A served connection, counted in its worker's load while it is open.
pub struct Counted {
    stream: TcpStream,
    _load: Guard,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Takes the next connection a worker was given, within a second.
    async fn next(incoming: &mut (impl tokio_stream::Stream<Item = io::Result<Counted>> + Unpin)) -> Counted {
        let given = tokio::time::timeout(Duration::from_secs(1), incoming.next()).await;
        given.expect("a connection within a second").expect("the stream is open").expect("registered")
    }

    async fn given_nothing(incoming: &mut (impl tokio_stream::Stream<Item = io::Result<Counted>> + Unpin)) -> bool {
        tokio::time::timeout(Duration::from_millis(100), incoming.next()).await.is_err()
    }

    /// A listener on a free port, its address, and two workers with their inboxes.
    async fn two_workers() -> (TcpListener, std::net::SocketAddr, Vec<Worker>, Inbox, Inbox) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ((a, inbox_a), (b, inbox_b)) = (worker(), worker());
        (listener, addr, vec![a, b], inbox_a, inbox_b)
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_worker_serving_the_fewest() {
        let (listener, addr, workers, inbox_a, inbox_b) = two_workers().await;
        let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio::spawn(accept(listener, workers, async move {
            let _ = stopping.await;
        }));
        let (mut a, mut b) = (Box::pin(inbox_a.into_stream()), Box::pin(inbox_b.into_stream()));

        // Four connections in a burst: two each, not four for whoever woke first.
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut served_a = vec![next(&mut a).await, next(&mut a).await];
        let served_b = vec![next(&mut b).await, next(&mut b).await];
        assert!(given_nothing(&mut a).await && given_nothing(&mut b).await);
        assert!(served_a.iter().chain(&served_b).all(|c| c.stream.nodelay().unwrap()), "TCP_NODELAY is set");

        // A closes both of its connections: the next two go to A, which serves none.
        served_a.clear();
        for _ in 0..2 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let _again = [next(&mut a).await, next(&mut a).await];
        assert!(given_nothing(&mut b).await);

        // Once stopped, the socket is closed: a new connection is refused.
        stop.send(()).unwrap();
        acceptor.await.unwrap().expect("stopped, not out of workers");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        drop(served_b);
    }

    #[tokio::test]
    async fn a_stopped_worker_gets_no_more_connections() {
        let (listener, addr, workers, inbox_a, inbox_b) = two_workers().await;
        let acceptor = tokio::spawn(accept(listener, workers, std::future::pending()));
        // A's thread has ended: its inbox is gone.
        drop(inbox_a);
        let mut b = Box::pin(inbox_b.into_stream());
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            served.push(next(&mut b).await);
        }
        // B ends too: the next connection finds no worker, and the acceptor says so.
        drop(b);
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        let outcome = tokio::time::timeout(Duration::from_secs(1), acceptor).await;
        assert!(matches!(outcome, Ok(Ok(Err(NoWorkers)))), "the acceptor reports that no worker is left");
    }
}
