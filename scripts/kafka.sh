#!/usr/bin/env bash
# A real Apache Kafka broker for the integration tests: fetches the broker
# jars from Maven Central with Maven (nothing else is downloaded), formats
# KRaft storage and runs one combined broker+controller on 127.0.0.1.
#
#   scripts/kafka.sh fetch          download the jars into the cache
#   scripts/kafka.sh start DIR      format DIR and start; prints the address
#   scripts/kafka.sh stop DIR       stop the broker started in DIR
#   scripts/kafka.sh restart DIR    stop and start again on the same data
#
# A three-node cluster, as production runs (replication factor 3,
# min.insync.replicas=2 for every topic, __consumer_offsets and
# __transaction_state included; unclean leader election off). Each node is
# a broker and a KRaft voter: three JVMs, not six, on a two-core machine,
# and a quorum of three survives the loss of one node as the brokers do.
#
#   scripts/kafka.sh cluster-start DIR   format DIR/node{1,2,3} and start
#                                        them; prints the three addresses
#   scripts/kafka.sh cluster-stop DIR    stop every node
#   scripts/kafka.sh node-stop DIR N     SIGTERM node N (1-3), wait for it
#   scripts/kafka.sh node-kill DIR N     kill -9 node N
#   scripts/kafka.sh node-start DIR N    start node N again on its data
#
# Nodes listen on KAFKA_HOST (default 127.0.0.1; a test may give an address
# of its own veth pair) at KAFKA_CLUSTER_PORT (default 19100) + 2(N-1), and
# +1 for the controller.
#
# KAFKA_VERSION (default below) picks the org.apache.kafka:kafka_2.13
# version; KLAGG_CACHE (default .cache in the repo) holds the jars;
# KAFKA_PORT (default 19092) is the client port, +1 the controller's. It is
# kept below Linux's ephemeral range (32768-60999), where an outgoing
# connection could already hold it; restart reuses the port start chose.
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
LOG4J_VERSION=${LOG4J_VERSION:-2.25.3}
SLF4J_VERSION=${SLF4J_VERSION:-2.0.17}
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${KLAGG_CACHE:-$repo/.cache}
lib=$cache/kafka-$KAFKA_VERSION-log4j-$LOG4J_VERSION-slf4j-$SLF4J_VERSION/lib
port=${KAFKA_PORT:-19092}

fetch() {
	if [ -f "$lib/.complete" ]; then return; fi
	command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch the broker jars" >&2; exit 1; }
	command -v java >/dev/null || { echo "kafka.sh: Java 17+ is needed to run the broker" >&2; exit 1; }
	local pom
	pom=$(mktemp -d)
	cat >"$pom/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.klagg</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- Maven would mediate slf4j-api down to 1.7, which cannot see the log4j2 binding -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
	echo "kafka.sh: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven into $lib" >&2
	mkdir -p "$lib"
	mvn -q -B -f "$pom/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib" >&2
	rm -rf "$pom"
	touch "$lib/.complete"
}

write_config() {
	local dir=$1
	local cport=$((port + 1))
	mkdir -p "$dir/data"
	echo "$port" >"$dir/port"
	cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.segment.bytes=16777216
log.cleaner.backoff.ms=1000
EOF
	cat >"$dir/log4j2.properties" <<EOF
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/broker.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
EOF
}

java_cmd() {
	local dir=$1
	shift
	java -Xms256m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$lib/*" "$@"
}

# write_node_config DIR N: node N of the three-node cluster.
write_node_config() {
	local dir=$1 n=$2 host=${KAFKA_HOST:-127.0.0.1} base=${KAFKA_CLUSTER_PORT:-19100}
	local p=$((base + 2 * (n - 1)))
	local voters="1@$host:$((base + 1)),2@$host:$((base + 3)),3@$host:$((base + 5))"
	mkdir -p "$dir/data"
	echo "$p" >"$dir/port"
	echo "$host" >"$dir/host"
	cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://$host:$p,CONTROLLER://$host:$((p + 1))
advertised.listeners=PLAINTEXT://$host:$p
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.segment.bytes=16777216
log.cleaner.backoff.ms=1000
EOF
	cat >"$dir/log4j2.properties" <<EOF
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/broker.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
EOF
}

# spawn DIR: start the JVM of the node configured in DIR.
spawn() {
	local dir=$1
	nohup bash -c "exec java -Xms256m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile='$dir/log4j2.properties' -cp '$lib/*' kafka.Kafka '$dir/server.properties'" \
		>"$dir/stdout.log" 2>&1 &
	echo $! >"$dir/pid"
}

# await DIR: wait until the node in DIR listens; print its address.
await() {
	local dir=$1 host port
	host=$(cat "$dir/host")
	port=$(cat "$dir/port")
	for _ in $(seq 1 120); do
		if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
			echo "$host:$port"
			return
		fi
		if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
			echo "kafka.sh: the broker in $dir exited; its output:" >&2
			tail -n 50 "$dir/stdout.log" "$dir/broker.log" >&2 || true
			exit 1
		fi
		sleep 0.5
	done
	echo "kafka.sh: the broker in $dir did not listen on $host:$port within 60s" >&2
	exit 1
}

launch() {
	local dir=$1
	port=$(cat "$dir/port")
	nohup bash -c "exec java -Xms256m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile='$dir/log4j2.properties' -cp '$lib/*' kafka.Kafka '$dir/server.properties'" \
		>"$dir/stdout.log" 2>&1 &
	echo $! >"$dir/pid"
	for _ in $(seq 1 120); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "Apache Kafka $KAFKA_VERSION (KRaft, single combined node) on 127.0.0.1:$port" >&2
			echo "127.0.0.1:$port"
			return
		fi
		if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
			echo "kafka.sh: the broker exited; its output:" >&2
			tail -n 50 "$dir/stdout.log" "$dir/broker.log" >&2 || true
			exit 1
		fi
		sleep 0.5
	done
	echo "kafka.sh: the broker did not listen on 127.0.0.1:$port within 60s" >&2
	exit 1
}

stop() {
	local dir=$1
	[ -f "$dir/pid" ] || return 0
	local pid
	pid=$(cat "$dir/pid")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 60); do
		kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }
		sleep 0.5
	done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$dir/pid"
}

case "${1:-}" in
fetch) fetch ;;
start)
	dir=${2:?usage: kafka.sh start DIR}
	fetch
	write_config "$dir"
	id=$(java_cmd "$dir" kafka.tools.StorageTool random-uuid)
	java_cmd "$dir" kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
		{ cat "$dir/format.log" >&2; exit 1; }
	launch "$dir"
	;;
stop) stop "${2:?usage: kafka.sh stop DIR}" ;;
cluster-start)
	dir=${2:?usage: kafka.sh cluster-start DIR}
	fetch
	for n in 1 2 3; do write_node_config "$dir/node$n" "$n"; done
	id=$(java_cmd "$dir/node1" kafka.tools.StorageTool random-uuid)
	for n in 1 2 3; do
		java_cmd "$dir/node$n" kafka.tools.StorageTool format -t "$id" -c "$dir/node$n/server.properties" >"$dir/node$n/format.log" 2>&1 ||
			{ cat "$dir/node$n/format.log" >&2; exit 1; }
	done
	# Together: a node's broker listens only once the quorum (two voters) is up.
	for n in 1 2 3; do spawn "$dir/node$n"; done
	addrs=()
	for n in 1 2 3; do addrs+=("$(await "$dir/node$n")"); done
	echo "Apache Kafka $KAFKA_VERSION (KRaft, three nodes, replication factor 3, min.insync.replicas 2) on ${addrs[*]}" >&2
	(IFS=,; echo "${addrs[*]}")
	;;
cluster-stop)
	dir=${2:?usage: kafka.sh cluster-stop DIR}
	for n in 1 2 3; do stop "$dir/node$n" & done
	wait
	;;
node-stop) stop "${2:?usage: kafka.sh node-stop DIR N}/node${3:?node 1-3}" ;;
node-kill)
	d=${2:?usage: kafka.sh node-kill DIR N}/node${3:?node 1-3}
	if [ -f "$d/pid" ]; then kill -9 "$(cat "$d/pid")" 2>/dev/null || true; rm -f "$d/pid"; fi
	;;
node-start)
	d=${2:?usage: kafka.sh node-start DIR N}/node${3:?node 1-3}
	spawn "$d"
	await "$d" >/dev/null
	;;
restart)
	dir=${2:?usage: kafka.sh restart DIR}
	stop "$dir"
	launch "$dir"
	;;
*)
	echo "usage: kafka.sh fetch | start DIR | stop DIR | restart DIR | cluster-start DIR | cluster-stop DIR | node-stop|node-kill|node-start DIR N" >&2
	exit 2
	;;
esac
