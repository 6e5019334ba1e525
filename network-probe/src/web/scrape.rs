//! The telemetry path's renders: concurrent scrapes share them ([`ScrapeCoalescer`]: 16
//! scrapers cost about two renders instead of queueing 10-30 s in the soak), and each response
//! is written chunk by chunk as it is sent ([`ScrapeBody`]: a 100k-series body, 100 MB, never
//! sits in memory whole). Large renders hand their memory back to the system when done.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use http_body_util::Full;
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
};

use super::{AppState, response::negotiate};
use crate::{
    flows::exposition::{self, FlowCursor, FlowSeries},
    metrics,
};

/// Concurrent scrapes share renders. Rendering reads every kernel map (hundreds of milliseconds
/// with 100k flows) under the flow table's lock, so 16 scrapers each rendering queued up for
/// 10-30 s in the soak. Instead a scrape waits for the render in progress, then takes the
/// newest render that *started* after the scrape arrived, or starts one: every scrape still
/// sees the state as of its own request or later, and N waiting scrapes cost about two renders.
/// The newest render is kept alive while scrapes are queued behind the one that took it (a
/// response can be sent in full before the next scrape in line looks, and then nothing else
/// would hold it: in the soak every scrape rendered anew, 130 ms each, 2 s per scrape); once
/// nobody waits, only a weak reference is kept, so a render lives no longer than the responses
/// that use it.
#[derive(Debug)]
pub struct ScrapeCoalescer<T = Scrape> {
    last: tokio::sync::Mutex<Option<LastRender<T>>>,
    /// Scrapes waiting for `last`.
    waiting: AtomicUsize,
}

impl<T> Default for ScrapeCoalescer<T> {
    fn default() -> Self {
        ScrapeCoalescer {
            last: tokio::sync::Mutex::new(None),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// The newest render: when it started, and the render itself (held strongly only while scrapes
/// are waiting).
#[derive(Debug)]
struct LastRender<T> {
    started: std::time::Instant,
    weak: std::sync::Weak<T>,
    kept: Option<Arc<T>>,
}

/// One render of the telemetry path: the registry's OpenMetrics text and a snapshot of the flow
/// series, written out as the response is sent (see `ScrapeBody`).
#[derive(Debug)]
pub struct Scrape {
    registry: String,
    flows: FlowSeries,
}

/// Renders of at least this many flow series hand their memory back to the system when the
/// last response using them is done (glibc keeps freed memory mapped until asked).
const TRIM_AFTER_SERIES: usize = 10_000;

impl Drop for Scrape {
    fn drop(&mut self) {
        if self.flows.len() >= TRIM_AFTER_SERIES {
            // Free the snapshot first, then trim, off the runtime thread when there is one (a
            // trim walks the whole heap).
            drop(std::mem::take(&mut self.flows));
            let trim = crate::support::memory::trim_heap;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(trim)),
                Err(_) => trim(),
            }
        }
    }
}

/// The body of a telemetry response, produced chunk by chunk: the registry's families, then
/// the flow series (about [`exposition::CHUNK_BYTES`] at a time), then `# EOF` for
/// OpenMetrics. A 100k-series body (100 MB) thus never sits in memory whole.
#[derive(Debug)]
pub(super) struct ScrapeBody {
    scrape: Arc<Scrape>,
    openmetrics: bool,
    cursor: FlowCursor,
    /// 0: registry part next, 1: flow series, 2: `# EOF`, 3: done.
    stage: u8,
}

impl hyper::body::Body for ScrapeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let body = self.get_mut();
        let chunk = loop {
            match body.stage {
                0 => {
                    body.stage = 1;
                    let registry = body.scrape.registry.as_str();
                    let registry = registry.strip_suffix("# EOF\n").unwrap_or(registry);
                    break if body.openmetrics {
                        registry.to_string()
                    } else {
                        metrics::openmetrics_to_text_004(registry)
                    };
                }
                1 => {
                    let mut chunk = String::with_capacity(exposition::CHUNK_BYTES + 512);
                    if body.scrape.flows.write(
                        &mut body.cursor,
                        body.openmetrics,
                        &mut chunk,
                        exposition::CHUNK_BYTES,
                    ) {
                        body.stage = 2;
                    }
                    if !chunk.is_empty() {
                        break chunk;
                    }
                }
                2 => {
                    body.stage = 3;
                    if body.openmetrics {
                        break "# EOF\n".to_string();
                    }
                }
                _ => return std::task::Poll::Ready(None),
            }
        };
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.stage >= 3
    }
}

/// A response's body: a whole text, or a telemetry body written as it is sent.
pub(super) type Body = http_body_util::Either<Full<Bytes>, ScrapeBody>;

impl ScrapeCoalescer<Scrape> {
    /// The render for a scrape that arrived at `arrived`; `None` if encoding failed.
    pub(super) async fn render(
        &self,
        state: &Arc<AppState>,
        arrived: std::time::Instant,
    ) -> Option<Arc<Scrape>> {
        self.share(arrived, || render_scrape(state)).await
    }
}

impl<T> ScrapeCoalescer<T> {
    /// A render for a request that arrived at `arrived`: the newest one if it started since,
    /// else a new one made by `render` (see [`ScrapeCoalescer`]).
    async fn share<F, R>(&self, arrived: std::time::Instant, render: F) -> Option<Arc<T>>
    where
        F: FnOnce() -> R,
        R: std::future::Future<Output = Option<Arc<T>>>,
    {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut last = self.last.lock().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let reusable = last
            .as_ref()
            .filter(|newest| newest.started >= arrived)
            .and_then(|newest| newest.weak.upgrade());
        let scrape = match reusable {
            Some(scrape) => scrape,
            None => {
                let started = std::time::Instant::now();
                let scrape = render().await?;
                *last = Some(LastRender {
                    started,
                    weak: Arc::downgrade(&scrape),
                    kept: None,
                });
                scrape
            }
        };
        if let Some(newest) = last.as_mut() {
            let queued = self.waiting.load(Ordering::SeqCst) > 0;
            newest.kept = queued.then(|| Arc::clone(&scrape));
        }
        Some(scrape)
    }
}

/// Reads the flow series and encodes the registry, off the runtime thread.
async fn render_scrape(state: &Arc<AppState>) -> Option<Arc<Scrape>> {
    // Off the runtime thread, so probes and other requests are not held up meanwhile.
    let reader = Arc::clone(state);
    let scrape = tokio::task::spawn_blocking(move || {
        // The series first: the registry's flow-table metrics describe the same refresh.
        let flows = FlowSeries::read(&reader.flows);
        metrics::render(&reader.registry).map(|registry| Scrape { registry, flows })
    })
    .await
    .ok()?
    .ok()?;
    Some(Arc::new(scrape))
}

/// The 200 of the telemetry path: `scrape` in the format the client asks for (see
/// [`super::response::exposition`]), written as it is sent.
pub(super) fn telemetry(request: &Request<Incoming>, scrape: Arc<Scrape>) -> Response<Body> {
    let (openmetrics, content_type) = negotiate(request);
    let mut response = Response::new(Body::Right(ScrapeBody {
        scrape,
        openmetrics,
        cursor: FlowCursor::default(),
        stage: 0,
    }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use super::*;

    /// 16 scrapes queued behind a render, each done with its render at once (as a response
    /// sent in full before the next scrape looks): the first render serves the first scrape,
    /// one more serves all the others, and a later scrape gets a fresh one.
    #[tokio::test]
    async fn queued_scrapes_share_one_render() {
        let coalescer = Arc::new(ScrapeCoalescer::<u32>::default());
        let renders = Arc::new(AtomicUsize::new(0));
        let scrape = |coalescer: Arc<ScrapeCoalescer<u32>>, renders: Arc<AtomicUsize>| async move {
            let arrived = std::time::Instant::now();
            let render = coalescer
                .share(arrived, || async {
                    let number = renders.fetch_add(1, Ordering::SeqCst) as u32 + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some(Arc::new(number))
                })
                .await
                .expect("a render");
            *render
        };
        let tasks: Vec<_> = (0..16)
            .map(|_| tokio::spawn(scrape(Arc::clone(&coalescer), Arc::clone(&renders))))
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap());
        }
        assert_eq!(
            renders.load(Ordering::SeqCst),
            2,
            "renders for 16 scrapes: {seen:?}"
        );
        assert_eq!(seen.iter().filter(|&&number| number == 2).count(), 15);
        // Nobody waits any more: the render is not kept, and a new scrape renders anew.
        assert!(coalescer.last.lock().await.as_ref().unwrap().kept.is_none());
        assert_eq!(
            scrape(Arc::clone(&coalescer), Arc::clone(&renders)).await,
            3
        );
    }
}
