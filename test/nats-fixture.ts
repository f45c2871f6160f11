/**
 * The replica tests' nats-server: a real one with JetStream on a free loopback port and a temporary
 * store, restartable on the same port and store (bench/lib/nats-server.ts, shared with
 * bench/replicas.ts).
 */
export { natsServerBinary, startNats, type NatsServer } from '../bench/lib/nats-server.js';
