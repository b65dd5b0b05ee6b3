//! `trackway.authorize` asked in batches: the questions that sessions are waiting on at one moment go to
//! the database as one statement, each distinct `(claims, kind, id)` once.
//!
//! A relay restart or a deploy makes every client reconnect and subscribe at once. Asked one by one, a
//! thousand questions queued for the live pool's few connections until the pool's wait timeout answered
//! them `unavailable` (seen in `bench/live.sh --scenario storm` on a loaded two-core machine), and they
//! cost the database a thousand statements while it was busiest. Clients of one token asking about the
//! same groups now cost one row of one statement.
//!
//! **Isolation.** A batch that fails (an operator's `authorize` raising an error for one question) is
//! asked again one question at a time, so that one bad question fails alone; a batch that times out
//! (`statement_timeout`) fails whole: asking each alone could take that long again per question.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, Semaphore};
use trackway_database::{Object, Pool};

use super::protocol::Target;
use crate::database::{self, answered, sql, DbError, LIVE_STATEMENT_TIMEOUT};

/// Questions waiting for a batch; full means the asking session waits (each session is paced already,
/// `limits::AUTHORIZE_PER_SECOND`).
const QUEUE: usize = 4096;
/// Most questions in one statement.
const MAX_BATCH: usize = 512;
/// Statements at once: the live pool has a few connections, and a storm is answered faster by full
/// batches than by many small ones.
const BATCHES_AT_ONCE: usize = 2;
/// SQLSTATE of a cancelled statement (`statement_timeout`).
const QUERY_CANCELED: &str = "57014";

/// The answer to one question: allowed or not, or why it could not be had.
pub type Answer = Result<bool, Unanswered>;

/// Why a question got no yes or no.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unanswered {
    /// The database could not say (no connection, no answer in time, the function raised an error).
    #[error(transparent)]
    Database(Arc<DbError>),
    /// The statement returned fewer rows than questions (a replaced `trackway.authorize` returning a set).
    #[error("trackway.authorize answered {got} of {asked} questions")]
    Short {
        /// Rows returned.
        got: usize,
        /// Questions asked.
        asked: usize,
    },
    /// The answering task is gone (the relay is shutting down).
    #[error("the relay is shutting down")]
    ShuttingDown,
}

impl From<DbError> for Unanswered {
    fn from(error: DbError) -> Unanswered {
        Unanswered::Database(Arc::new(error))
    }
}

/// A question and where its answer goes.
struct Question {
    /// The token's claims as JSON text (compared as text: the same token gives the same text).
    claims: Arc<str>,
    /// What the session wants to watch.
    target: Target,
    /// Told the answer.
    reply: oneshot::Sender<Answer>,
}

/// The sessions' side: ask a question, wait for its batch.
#[derive(Clone)]
pub struct Authorizer {
    questions: mpsc::Sender<Question>,
}

impl Authorizer {
    /// Starts the task that answers questions with `pool`. It ends once every `Authorizer` is dropped.
    pub fn start(pool: Pool) -> Authorizer {
        let (questions, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, waiting));
        Authorizer { questions }
    }

    /// May a token with `claims` watch `target`? `Err` when the database could not say.
    pub async fn ask(&self, claims: Arc<str>, target: &Target) -> Answer {
        let (reply, answer) = oneshot::channel();
        let question = Question { claims, target: target.clone(), reply };
        self.questions.send(question).await.map_err(|_| Unanswered::ShuttingDown)?;
        answer.await.map_err(|_| Unanswered::ShuttingDown)?
    }
}

/// Takes the questions waiting (up to [`MAX_BATCH`]) whenever a statement may start, and answers them.
async fn run(pool: Pool, mut waiting: mpsc::Receiver<Question>) {
    let places = Arc::new(Semaphore::new(BATCHES_AT_ONCE));
    loop {
        // A place first: the questions that come while both statements run wait for the next batch.
        let Ok(place) = places.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(question) => batch.push(question),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            answer(&pool, batch).await;
            drop(place);
        });
    }
}

/// Answers a batch: each distinct question once.
async fn answer(pool: &Pool, batch: Vec<Question>) {
    let distinct = Distinct::of(batch.iter().map(|q| (&q.claims, &q.target)));
    let answers = ask_database(pool, &distinct.questions).await;
    for (question, &slot) in batch.into_iter().zip(&distinct.slot_of) {
        let _ = question.reply.send(answers[slot].clone());
    }
}

/// The distinct questions of a batch, and for each question of the batch the index of its distinct one.
#[derive(Debug, PartialEq)]
struct Distinct {
    /// `(claims, kind, id)`, each once, in order of first appearance.
    questions: Vec<(Arc<str>, &'static str, String)>,
    /// Per question of the batch, in order: its index in `questions`.
    slot_of: Vec<usize>,
}

impl Distinct {
    fn of<'a>(batch: impl Iterator<Item = (&'a Arc<str>, &'a Target)>) -> Distinct {
        let mut index: HashMap<(&str, &str, &str), usize> = HashMap::new();
        let mut questions = Vec::new();
        let mut slot_of = Vec::new();
        for (claims, target) in batch {
            let next = questions.len();
            let slot = *index.entry((claims, target.kind(), target.id())).or_insert(next);
            if slot == next {
                questions.push((claims.clone(), target.kind(), target.id().to_owned()));
            }
            slot_of.push(slot);
        }
        Distinct { questions, slot_of }
    }
}

/// How long the relay waits for an authorization's answer: the live pool's `statement_timeout`, and a
/// margin for when the path, not the statement, is what stopped.
const ANSWER_BOUND: Duration = database::beyond(LIVE_STATEMENT_TIMEOUT);

/// One answer per question, in order.
async fn ask_database(pool: &Pool, questions: &[(Arc<str>, &'static str, String)]) -> Vec<Answer> {
    let all = |error: Unanswered| vec![Err(error); questions.len()];
    let client = match database::pooled(pool).await {
        Ok(client) => client,
        Err(e) => return all(e.into()),
    };
    let claims: Vec<&str> = questions.iter().map(|q| &*q.0).collect();
    let kinds: Vec<&str> = questions.iter().map(|q| q.1).collect();
    let ids: Vec<&str> = questions.iter().map(|q| q.2.as_str()).collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&claims, &kinds, &ids];
    let error = match answered("trackway.authorize", ANSWER_BOUND, client.query(sql::AUTHORIZE_BATCH, &params)).await {
        Ok(rows) if rows.len() == questions.len() => return rows.iter().map(allowed).collect(),
        Ok(rows) => Unanswered::Short { got: rows.len(), asked: questions.len() },
        Err(e) => {
            if !e.is_server_answer() {
                // Its answer may still come, out of turn: never pooled again.
                drop(Object::take(client));
                return all(e.into());
            }
            let cancelled = e.code().is_some_and(|c| c.code() == QUERY_CANCELED);
            if questions.len() == 1 || cancelled {
                return all(e.into());
            }
            e.into()
        }
    };
    tracing::debug!(%error, questions = questions.len(), "a batch of authorizations failed: asking each alone");
    let mut answers = Vec::with_capacity(questions.len());
    for (claims, kind, id) in questions {
        let claims: &str = claims;
        match answered("trackway.authorize", ANSWER_BOUND, client.query_one(sql::AUTHORIZE_ONE, &[&claims, kind, id]))
            .await
        {
            Ok(row) => answers.push(allowed(&row)),
            Err(e) if e.is_server_answer() => answers.push(Err(e.into())),
            Err(e) => {
                drop(Object::take(client));
                answers.resize(questions.len(), Err(e.into()));
                return answers;
            }
        }
    }
    answers
}

/// The function's answer in a row: NULL is no.
fn allowed(row: &tokio_postgres::Row) -> Answer {
    Ok(row.try_get::<_, Option<bool>>(0).map_err(DbError::from)?.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_distinct_question_is_asked_once_and_every_question_gets_its_answer() {
        let a: Arc<str> = Arc::from("{\"id\":\"a\"}");
        let b: Arc<str> = Arc::from("{\"id\":\"b\"}");
        let g1 = Target::Group("g1".into());
        let d1 = Target::Device("g1".into());
        let batch = [(&a, &g1), (&a, &g1), (&b, &g1), (&a, &d1), (&b, &g1)];
        let distinct = Distinct::of(batch.into_iter());
        let kinds: Vec<(&str, &str, &str)> =
            distinct.questions.iter().map(|(c, k, i)| (&**c, *k, i.as_str())).collect();
        assert_eq!(
            kinds,
            [("{\"id\":\"a\"}", "group", "g1"), ("{\"id\":\"b\"}", "group", "g1"), ("{\"id\":\"a\"}", "device", "g1")]
        );
        assert_eq!(distinct.slot_of, [0, 0, 1, 2, 1]);
    }
}
