// Command go-sarama schedules or cancels a delayq job from Go, with Shopify's sarama client.
//
// It imports nothing of delayq: one ingest record is one command (see the README, "Wire
// contract"). It keeps sarama's default partitioner (FNV-1a), which often puts a record on
// another partition than the job's home partition (murmur2 of the id): delayq moves such a
// command to the home partition, so the defaults work, at the cost of one extra hop.
//
//	go-sarama -id order-1 -target reminders -delay 90s -value 'hello'
//	go-sarama -id order-1 -cancel
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/Shopify/sarama"
)

// delayMs reads a Go duration ("1.5s", "90m") or a plain number of milliseconds.
func delayMs(text string) (int64, error) {
	if ms, err := strconv.ParseInt(text, 10, 64); err == nil {
		return ms, nil
	}
	d, err := time.ParseDuration(text)
	return d.Milliseconds(), err
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "bootstrap brokers host:port,..., by default make run's embedded broker")
	topic := flag.String("topic", "delayq-ingest", "delayq's ingest topic")
	id := flag.String("id", "", "job id (the record key; required)")
	target := flag.String("target", "", "topic the job is forwarded to")
	delay := flag.String("delay", "", "forward this long after the record time: a Go duration (90s, 1h30m) or milliseconds")
	value := flag.String("value", "", "value of the forwarded record")
	cancel := flag.Bool("cancel", false, "cancel job -id instead of scheduling it")
	flag.Parse()

	msg := &sarama.ProducerMessage{Topic: *topic, Key: sarama.StringEncoder(*id)}
	switch {
	case *id == "" || flag.NArg() > 0:
		usage("give -id, and no arguments besides flags")
	case *cancel:
		if *target != "" || *delay != "" || *value != "" {
			usage("a cancel is the job id alone: no -target, -delay or -value")
		}
		// Null value, no headers.
	case *target == "" || *delay == "":
		usage("scheduling needs -target and -delay")
	default:
		ms, err := delayMs(*delay)
		if err != nil || ms < 0 {
			usage(fmt.Sprintf("bad -delay %q: want e.g. 1s, 90m or 1500 (ms)", *delay))
		}
		msg.Value = sarama.StringEncoder(*value)
		msg.Headers = []sarama.RecordHeader{
			{Key: []byte("delayq-target"), Value: []byte(*target)},
			{Key: []byte("delayq-delay-ms"), Value: []byte(strconv.FormatInt(ms, 10))},
		}
	}

	config := sarama.NewConfig()
	// sarama's default Version (0.8.2) cannot send headers: every message fails with "Producing
	// headers requires Kafka at least v0.11". 2.0 writes record batches with headers and
	// timestamps (delayq-delay-ms counts from the record timestamp).
	config.Version = sarama.V2_0_0_0
	config.Producer.RequiredAcks = sarama.WaitForAll
	// A SyncProducer waits for each result, so it needs successes returned.
	config.Producer.Return.Successes = true
	// The partitioner is left at its default (FNV-1a hash of the key) on purpose.

	client, err := sarama.NewClient(strings.Split(*brokers, ","), config)
	if err != nil {
		fail(err)
	}
	defer client.Close()
	// A produce to a missing topic could make the broker create it with its own partition
	// count, which must be delayq's. client.Topics() comes from a metadata request for all
	// topics, which creates none.
	if !exists(client, *topic) {
		fail(fmt.Errorf("ingest topic %q does not exist: start delayq first, or create it with DELAYQ_PARTITIONS partitions", *topic))
	}
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		fail(err)
	}
	defer producer.Close()

	partition, offset, err := producer.SendMessage(msg)
	if err != nil {
		fail(err)
	}
	what := "schedule"
	if *cancel {
		what = "cancel"
	}
	fmt.Printf("%s of job %s written: %s partition %d offset %d\n", what, *id, *topic, partition, offset)
}

func exists(client sarama.Client, topic string) bool {
	topics, err := client.Topics()
	if err != nil {
		fail(err)
	}
	for _, t := range topics {
		if t == topic {
			return true
		}
	}
	return false
}

func usage(problem string) {
	fmt.Fprintf(os.Stderr, "go-sarama: %s (-h for help)\n", problem)
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "go-sarama: %v\n", err)
	os.Exit(1)
}
