#!/usr/bin/env bash
# Makes deploy/secrets/ for deploy/compose.tls.yml (docs/deployment.md, "TLS and SASL"): a throw-away
# CA, server certificates for the compose hosts `kafka` and `redis`, the broker's PKCS#12 keystore and
# its password file, the broker's JAAS file (SASL PLAIN users `broker` and `monitor`; SCRAM enabled)
# and the client config of its healthcheck. Passwords come from .env:
#   KAFKA_BROKER_PASSWORD  MONITOR_KAFKA_SASL_PASSWORD  MONITOR_REDIS_PASSWORD
# deploy/secrets/ is never committed (.gitignore). A production deployment uses its own CA instead.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. ./.env
: "${KAFKA_BROKER_PASSWORD:?set it in .env}" "${MONITOR_KAFKA_SASL_PASSWORD:?set it in .env}"
umask 077
mkdir -p deploy/secrets
cd deploy/secrets
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=aimon compose CA" -keyout ca.key -out ca.pem
for host in kafka redis; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$host.key" -out "$host.csr"
  printf 'subjectAltName=DNS:%s,DNS:localhost\nextendedKeyUsage=serverAuth\n' "$host" >"$host.ext"
  openssl x509 -req -in "$host.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
    -extfile "$host.ext" -out "$host.pem"
done
keystore_password=$(openssl rand -hex 16)
printf '%s' "$keystore_password" >keystore-password
openssl pkcs12 -export -in kafka.pem -inkey kafka.key -name kafka -passout "pass:$keystore_password" -out kafka.p12
cat >kafka_server_jaas.conf <<JAAS
KafkaServer {
  org.apache.kafka.common.security.plain.PlainLoginModule required
    username="broker" password="$KAFKA_BROKER_PASSWORD"
    user_broker="$KAFKA_BROKER_PASSWORD" user_monitor="$MONITOR_KAFKA_SASL_PASSWORD";
  org.apache.kafka.common.security.scram.ScramLoginModule required;
};
JAAS
cat >client.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="broker" password="$KAFKA_BROKER_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/secrets/ca.pem
PROPS
# The CA key signs nothing else: new certificates come with a new CA (run this again).
rm -f ./*.csr ./*.ext ca.srl ca.key
# The containers' own users (kafka, redis; not root) must read these files.
chmod 644 ./*
chmod 755 .
echo "made $(pwd)"
