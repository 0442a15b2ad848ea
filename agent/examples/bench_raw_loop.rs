//! The benchmark's ceiling (used by `bench/agent/run.sh`): the broker work a
//! worker with results must do and nothing else. Consume with up to 100 in
//! flight, publish a persistent result with a publisher confirm, then ack.
//!
//! `bench_raw_loop <amqp-url> <task-queue>`; results go to each message's
//! `reply_to`. Runs until killed.

use anyhow::Context;
use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};

const IN_FLIGHT: u16 = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (url, queue) = match args.as_slice() {
        [_, url, queue] => (url.clone(), queue.clone()),
        _ => anyhow::bail!("usage: bench_raw_loop URL TASK_QUEUE"),
    };
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .context("failed to connect")?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(IN_FLIGHT, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "raw-loop".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let publish = publish.clone();
        tokio::spawn(async move {
            let reply_to = delivery
                .properties
                .reply_to()
                .as_ref()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default();
            let confirm = publish
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    br#"{"status":"succeeded"}"#,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await;
            if let Ok(confirm) = confirm
                && confirm.await.is_ok()
            {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Ok(())
}
