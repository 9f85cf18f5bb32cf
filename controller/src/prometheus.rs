//! Prometheus' instant-query API, for the rollouts' PromQL gates: one GET per query
//! (`http_client`: a fresh connection each time), the answer bounded in size and time. Only scalars and instant vectors
//! are values a gate can compare.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::spec::PrometheusUrl;
use http_body_util::Full;
use hyper::body::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::http_client::{self, HttpError};

/// A query's answer at most: a gate compares a handful of series, not a dump.
const MAX_ANSWER: usize = 1 << 20;
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("cannot reach Prometheus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Prometheus at {url} did not answer within {} s", QUERY_TIMEOUT.as_secs())]
    Timeout { url: String },
    /// Prometheus' own error: `bad_data` is a query it cannot parse.
    #[error("Prometheus at {url} refused the query ({kind}): {message}")]
    Refused {
        url: String,
        kind: String,
        message: String,
    },
    #[error("Prometheus at {url} answered HTTP {status}, not its query API's JSON: {reason}")]
    Malformed {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("the query returns a {0}: a gate compares a scalar or an instant vector (drop the range selector, or wrap it in a function such as rate())")]
    WrongType(String),
}

impl QueryError {
    /// The query itself is wrong (not the server's state): refused at `app apply`.
    pub fn is_bad_query(&self) -> bool {
        matches!(self, QueryError::WrongType(_))
            || matches!(self, QueryError::Refused { kind, .. } if kind == "bad_data")
    }
}

/// One series of an answer: its labels as PromQL writes them, and its value (NaN and
/// infinities included, as Prometheus sends them).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: String,
    pub value: f64,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Scalar((f64, String)),
    Vector(Vec<VectorSample>),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

fn labels(metric: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = metric.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// An answer's body, read whatever the HTTP status: Prometheus explains errors in JSON.
pub fn parse_answer(url: &str, status: u16, body: &[u8]) -> Result<Vec<Sample>, QueryError> {
    let malformed = |reason: String| QueryError::Malformed {
        url: url.to_owned(),
        status,
        reason,
    };
    let a: Answer = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    if a.status != "success" {
        return Err(QueryError::Refused {
            url: url.to_owned(),
            kind: a.error_type.unwrap_or_else(|| "unknown".into()),
            message: a.error.unwrap_or_default(),
        });
    }
    let value = |s: &str| {
        s.parse::<f64>()
            .map_err(|_| malformed(format!("{s:?} is not a number")))
    };
    match a.data.ok_or_else(|| malformed("no data".into()))? {
        Data::Scalar((_, v)) => Ok(vec![Sample {
            labels: "scalar".into(),
            value: value(&v)?,
        }]),
        Data::Vector(series) => series
            .iter()
            .map(|s| {
                Ok(Sample {
                    labels: labels(&s.metric),
                    value: value(&s.value.1)?,
                })
            })
            .collect(),
        Data::Matrix(_) => Err(QueryError::WrongType("range vector".into())),
        Data::String(_) => Err(QueryError::WrongType("string".into())),
    }
}

/// Evaluates `promql` now on the server at `url`.
pub async fn query(url: &PrometheusUrl, promql: &str) -> Result<Vec<Sample>, QueryError> {
    let name = url.to_string();
    match tokio::time::timeout(QUERY_TIMEOUT, ask(url, promql)).await {
        Ok(r) => r,
        Err(_) => Err(QueryError::Timeout { url: name }),
    }
}

async fn ask(url: &PrometheusUrl, promql: &str) -> Result<Vec<Sample>, QueryError> {
    let name = url.to_string();
    let path = format!(
        "{}?query={}",
        url.api("query"),
        utf8_percent_encode(promql, NON_ALPHANUMERIC)
    );
    let req = http::Request::get(path)
        .header(http::header::HOST, url.host())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "fleet-controller")
        .body(Full::new(Bytes::new()))
        .map_err(|e| QueryError::Unreachable {
            url: name.clone(),
            reason: e.to_string(),
        })?;
    match http_client::exchange(url.addr(), req, MAX_ANSWER).await {
        Ok(a) => parse_answer(&name, a.status, &a.body),
        Err(e @ HttpError::Body { .. }) => Err(QueryError::Malformed {
            url: name,
            status: 200,
            reason: e.to_string(),
        }),
        Err(e) => Err(QueryError::Unreachable {
            url: name,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://p:9090";

    #[test]
    fn vectors_and_scalars_become_samples() {
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"app":"shop","release":"2.0"},"value":[1700000000.5,"0.25"]},
            {"metric":{},"value":[1700000000.5,"NaN"]},
            {"metric":{"x":"y"},"value":[1700000000.5,"+Inf"]}]}}"#;
        let s = parse_answer(URL, 200, v).unwrap();
        assert_eq!(s[0].labels, r#"{app="shop",release="2.0"}"#);
        assert_eq!(s[0].value, 0.25);
        assert!(s[1].value.is_nan());
        assert_eq!(s[2].value, f64::INFINITY);
        let sc = br#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"3"]}}"#;
        assert_eq!(parse_answer(URL, 200, sc).unwrap()[0].value, 3.0);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_answer(URL, 200, empty).unwrap().is_empty());
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let bad =
            br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#;
        let e = parse_answer(URL, 400, bad).unwrap_err();
        assert!(e.is_bad_query());
        assert!(e.to_string().contains("parse error"), "{e}");
        let exec = br#"{"status":"error","errorType":"execution","error":"many-to-many"}"#;
        assert!(!parse_answer(URL, 422, exec).unwrap_err().is_bad_query());
        let m = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let e = parse_answer(URL, 200, m).unwrap_err();
        assert!(
            e.is_bad_query() && e.to_string().contains("range vector"),
            "{e}"
        );
        let e = parse_answer(URL, 502, b"<html>bad gateway</html>").unwrap_err();
        assert!(
            matches!(e, QueryError::Malformed { status: 502, .. }),
            "{e}"
        );
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"abc"]}}"#;
        assert!(parse_answer(URL, 200, nan).is_err());
    }
}
