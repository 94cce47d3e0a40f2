/* The overlay endpoint's compiled data path (nova_quic.datapath loads it with ctypes).
 *
 * One thread, started by the Python endpoint, owns the TAP and the UDP socket's
 * receive side. It carries every Ethernet frame between them as 1-RTT QUIC packets
 * that hold a single DATAGRAM frame, sealed and opened with each connection's keys
 * (RFC 9001 5.3, 5.4; the same packets nova_quic/packets.py makes), without Python
 * and without the GIL. Everything else goes to the Python endpoint (aioquic) through
 * a SOCK_SEQPACKET pair, one message each:
 *
 *   'U' addrlen sockaddr datagram   a datagram for aioquic (handshake, ACKs, streams,
 *                                   pings, a packet of the peer's next key phase)
 *   'A' slot                        a link opened packets: fold them into aioquic's ACKs
 *   'K' slot                        a link sealed enough packets: time for a key update
 *   'T' slot frame                  a frame for a peer without the fast path (255: all
 *                                   such peers)
 *   'E' text                        the thread stopped on an error
 *
 * aioquic stays the owner of each connection: its keys (the endpoint installs them
 * here, again after every key update), its packet numbers (the endpoint takes the
 * next number from here and gives it back around aioquic's own packets, under
 * dp_lock) and its acknowledgements (dp_drain hands over the numbers opened here).
 *
 * Frames with a virtio-net header (the TAP's offloads) larger than one packet go as
 * pieces of equal size, sent with one UDP GSO write per run and reassembled on the
 * other side: one TCP super-frame of 64 KiB is about 45 packets, one system call each
 * way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#define UDP_SEGMENT 103
#define UDP_GRO 104

#define CID 8               /* our connection ids' length */
#define PN 4                /* packet number bytes we send */
#define TAG 16
#define SAMPLE 16
#define HEADER (1 + CID + PN)
#define VNET 10             /* struct virtio_net_hdr */
#define LINKS 64
#define CIDS 1024
#define MACS 4096           /* remote MAC table slots (power of two) */
#define LOCAL_MACS 1024
#define RANGES 128          /* packet number ranges waiting for aioquic's ACK */
#define WINDOW 2048         /* replay window, packets */
#define GSO_SEGMENTS 64
#define GSO_BYTES 65000
#define BATCH 64
#define BUFFER (65536 + VNET + 64)
#define WHOLE 0
#define WHOLE_VNET 1
#define PIECE 2
#define PIECE_HEADER 6      /* 0x30, kind, message id (2), index, count */
#define ALL 255

enum { SUITE_AES128 = 0x1301, SUITE_AES256 = 0x1302, SUITE_CHACHA = 0x1303 };

struct keys {
    EVP_CIPHER_CTX *aead;
    uint8_t iv[12];
    int phase;
};

struct range { uint64_t start, stop; };

struct link {
    int taken;                      /* the slot belongs to a link (dp_link_add) */
    int used;                       /* and it has keys and a peer: frames flow */
    int fast, suite;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint8_t peer_cid[CID];
    EVP_CIPHER_CTX *hp_tx, *hp_rx;
    struct keys tx, rx, rx_old;     /* rx_old: the previous phase, for late packets */
    uint64_t next_pn, sealed, update_every;
    int update_asked;
    /* receiving */
    int64_t largest;
    uint64_t window[WINDOW / 64];   /* bit d: largest - d was received */
    struct range ranges[RANGES];
    int nranges, notified;
    double largest_time, last_rx;
    /* reassembly of pieces */
    uint8_t *message;
    size_t message_len;
    int piece_next, piece_id;
    /* counters */
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes, drops;
};

struct cid_entry { uint8_t cid[CID]; int slot; };
struct mac_entry { uint8_t mac[6]; uint8_t used; uint8_t slot; };

struct dp {
    int tap, sock, channel, python_end, stop_fd, vnet, gso;
    size_t max_frame, piece;
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    struct link links[LINKS];
    struct cid_entry cids[CIDS];
    int ncids;
    struct mac_entry macs[MACS];
    int nmacs;
    uint8_t local_macs[LOCAL_MACS][6];
    int nlocal;
    uint64_t channel_drops;
    uint8_t in[BUFFER], frame[BUFFER + VNET], out[GSO_SEGMENTS * 2048 + 2 * BUFFER];
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const EVP_CIPHER *aead_cipher(int suite) {
    switch (suite) {
    case SUITE_AES128: return EVP_aes_128_gcm();
    case SUITE_AES256: return EVP_aes_256_gcm();
    case SUITE_CHACHA: return EVP_chacha20_poly1305();
    }
    return NULL;
}

/* -- channel to Python --------------------------------------------------------------- */
static void to_python(struct dp *dp, uint8_t kind, const void *head, size_t head_len,
                      const void *data, size_t len) {
    struct iovec iov[3] = {{&kind, 1}, {(void *)head, head_len}, {(void *)data, len}};
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = 3;
    if (sendmsg(dp->channel, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        dp->channel_drops++;
}

/* -- keys ---------------------------------------------------------------------------- */
static void keys_free(struct keys *keys) {
    if (keys->aead) EVP_CIPHER_CTX_free(keys->aead);
    memset(keys, 0, sizeof *keys);
}

static int keys_make(struct keys *keys, int suite, int encrypt, const uint8_t *key,
                     const uint8_t *iv, int phase) {
    const EVP_CIPHER *cipher = aead_cipher(suite);
    EVP_CIPHER_CTX *ctx = cipher ? EVP_CIPHER_CTX_new() : NULL;
    if (!ctx) return -1;
    if (EVP_CipherInit_ex(ctx, cipher, NULL, key, NULL, encrypt) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return -1;
    }
    keys_free(keys);
    keys->aead = ctx;
    memcpy(keys->iv, iv, 12);
    keys->phase = phase;
    return 0;
}

static EVP_CIPHER_CTX *hp_make(int suite, const uint8_t *key) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *cipher = suite == SUITE_AES128 ? EVP_aes_128_ecb()
                             : suite == SUITE_AES256 ? EVP_aes_256_ecb() : EVP_chacha20();
    if (!ctx) return NULL;
    if (EVP_EncryptInit_ex(ctx, cipher, NULL, key, NULL) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    return ctx;
}

/* Header protection mask of a sample (RFC 9001 5.4.3, 5.4.4): 5 bytes used. */
static int hp_mask(EVP_CIPHER_CTX *ctx, int suite, const uint8_t *sample, uint8_t *mask) {
    int len = 0;
    if (suite == SUITE_CHACHA) {
        static const uint8_t zeros[5];
        if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, sample) != 1) return -1;
        return EVP_EncryptUpdate(ctx, mask, &len, zeros, 5) == 1 ? 0 : -1;
    }
    return EVP_EncryptUpdate(ctx, mask, &len, sample, SAMPLE) == 1 ? 0 : -1;
}

static void nonce(const struct keys *keys, uint64_t pn, uint8_t *out) {
    memcpy(out, keys->iv, 12);
    for (int i = 0; i < 8; i++) out[11 - i] ^= (uint8_t)(pn >> (8 * i));
}

/* -- sealing ------------------------------------------------------------------------- */
/* One packet to `link` of `prefix` (frame type, kind, piece header) and `data`, written
 * to `out`; returns its size (0: the cipher failed). */
static size_t seal(struct link *link, uint8_t *out, const uint8_t *prefix,
                   size_t prefix_len, const uint8_t *data, size_t len) {
    uint64_t pn = link->next_pn++;
    uint8_t iv[12], mask[16];
    int outl = 0;
    size_t body = prefix_len + len;
    out[0] = (uint8_t)(0x40 | link->tx.phase << 2 | (PN - 1));
    memcpy(out + 1, link->peer_cid, CID);
    for (int i = 0; i < PN; i++) out[1 + CID + i] = (uint8_t)(pn >> (8 * (PN - 1 - i)));
    nonce(&link->tx, pn, iv);
    EVP_CIPHER_CTX *ctx = link->tx.aead;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1
        || EVP_EncryptUpdate(ctx, NULL, &outl, out, HEADER) != 1
        || EVP_EncryptUpdate(ctx, out + HEADER, &outl, prefix, (int)prefix_len) != 1
        || EVP_EncryptUpdate(ctx, out + HEADER + prefix_len, &outl, data, (int)len) != 1
        || EVP_EncryptFinal_ex(ctx, out + HEADER + body, &outl) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG, out + HEADER + body) != 1)
        return 0;
    if (hp_mask(link->hp_tx, link->suite, out + 1 + CID + PN, mask) != 0) return 0;
    out[0] ^= mask[0] & 0x1F;
    for (int i = 0; i < PN; i++) out[1 + CID + i] ^= mask[1 + i];
    link->sealed++;
    return HEADER + body + TAG;
}

struct outgoing {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    size_t total, segment;
    int count, slot;
};

/* The frame `data` (with its virtio-net header when the TAP has one) as packets to `link`,
 * written to `out`: whole, or in pieces of equal size. */
static int seal_frame(struct dp *dp, struct link *link, int slot, const uint8_t *data,
                      size_t len, uint8_t *out, struct outgoing *o) {
    uint8_t prefix[PIECE_HEADER];
    o->addr = link->addr;
    o->addrlen = link->addrlen;
    o->total = o->segment = 0;
    o->count = 0;
    o->slot = slot;
    prefix[0] = 0x30;
    if (!dp->vnet || len <= dp->max_frame + VNET) {
        prefix[1] = dp->vnet ? WHOLE_VNET : WHOLE;
        o->total = o->segment = seal(link, out, prefix, 2, data, len);
        o->count = o->total ? 1 : 0;
    } else {
        static uint16_t message_id;
        size_t piece = dp->piece;
        size_t count = (len + piece - 1) / piece;
        if (count > 255) return -1;
        message_id++;
        prefix[1] = PIECE;
        prefix[2] = (uint8_t)(message_id >> 8);
        prefix[3] = (uint8_t)message_id;
        prefix[5] = (uint8_t)count;
        for (size_t i = 0; i < count; i++) {
            size_t size = i + 1 < count ? piece : len - i * piece;
            prefix[4] = (uint8_t)i;
            size_t n = seal(link, out + o->total, prefix, PIECE_HEADER, data + i * piece, size);
            if (!n) return -1;
            if (!i) o->segment = n;
            o->total += n;
            o->count++;
        }
    }
    if (!o->count) return -1;
    if (link->sealed >= link->update_every && !link->update_asked) {
        uint8_t s = (uint8_t)slot;
        link->update_asked = 1;
        to_python(dp, 'K', &s, 1, NULL, 0);
    }
    return 0;
}

static int send_packets(struct dp *dp, struct outgoing *o, uint8_t *out) {
    size_t offset = 0;
    int left = o->count, failed = 0;
    while (left > 0) {
        int run = left;
        size_t limit = GSO_BYTES / o->segment;
        if (run > GSO_SEGMENTS) run = GSO_SEGMENTS;
        if ((size_t)run > limit) run = (int)limit;
        size_t bytes = run == left ? o->total - offset : (size_t)run * o->segment;
        struct iovec iov = {out + offset, bytes};
        struct msghdr msg = {0};
        union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } control;
        msg.msg_name = &o->addr;
        msg.msg_namelen = o->addrlen;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (run > 1 && dp->gso) {
            uint16_t segment = (uint16_t)o->segment;
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof control.buf;
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
            cmsg->cmsg_level = SOL_UDP;
            cmsg->cmsg_type = UDP_SEGMENT;
            cmsg->cmsg_len = CMSG_LEN(sizeof segment);
            memcpy(CMSG_DATA(cmsg), &segment, sizeof segment);
            if (sendmsg(dp->sock, &msg, MSG_DONTWAIT) < 0) {
                if (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT) {
                    dp->gso = 0;  /* no GSO on this path: one packet per call from now on */
                    continue;
                }
                failed += run;
            }
        } else {
            for (int i = 0; i < run; i++) {
                size_t size = offset + o->segment <= o->total ? o->segment : o->total - offset;
                if (sendto(dp->sock, out + offset, size, MSG_DONTWAIT,
                           (struct sockaddr *)&o->addr, o->addrlen) < 0)
                    failed++;
                offset += size;
            }
            left -= run;
            continue;
        }
        offset += bytes;
        left -= run;
    }
    return failed;
}

/* -- MAC tables ---------------------------------------------------------------------- */
static unsigned mac_hash(const uint8_t *mac) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 6; i++) h = (h ^ mac[i]) * 16777619u;
    return h & (MACS - 1);
}

static int mac_lookup(struct dp *dp, const uint8_t *mac) {
    for (unsigned i = mac_hash(mac), n = 0; n < MACS; i = (i + 1) & (MACS - 1), n++) {
        if (!dp->macs[i].used) return -1;
        if (!memcmp(dp->macs[i].mac, mac, 6)) return dp->macs[i].slot;
    }
    return -1;
}

static void mac_learn(struct dp *dp, const uint8_t *mac, int slot) {
    if (mac[0] & 1) return;  /* a multicast source is no address to learn */
    if (dp->nmacs >= MACS * 3 / 4) {  /* full: forget everything and learn again */
        memset(dp->macs, 0, sizeof dp->macs);
        dp->nmacs = 0;
    }
    unsigned i = mac_hash(mac);
    while (dp->macs[i].used && memcmp(dp->macs[i].mac, mac, 6)) i = (i + 1) & (MACS - 1);
    if (!dp->macs[i].used) dp->nmacs++;
    memcpy(dp->macs[i].mac, mac, 6);
    dp->macs[i].used = 1;
    dp->macs[i].slot = (uint8_t)slot;
}

/* Forget the MACs behind `forget_slot` and the MAC `forget_mac` (either may be -1 or
 * NULL): open addressing, so the table is built again without them. */
static void macs_rebuild(struct dp *dp, int forget_slot, const uint8_t *forget_mac) {
    static struct mac_entry old[MACS];
    memcpy(old, dp->macs, sizeof old);
    memset(dp->macs, 0, sizeof dp->macs);
    dp->nmacs = 0;
    for (int i = 0; i < MACS; i++)
        if (old[i].used && old[i].slot != forget_slot
            && !(forget_mac && !memcmp(old[i].mac, forget_mac, 6)))
            mac_learn(dp, old[i].mac, old[i].slot);
}

static void local_mac(struct dp *dp, const uint8_t *mac) {
    if (mac[0] & 1) return;
    for (int i = dp->nlocal - 1; i >= 0; i--)
        if (!memcmp(dp->local_macs[i], mac, 6)) return;
    if (dp->nlocal < LOCAL_MACS) memcpy(dp->local_macs[dp->nlocal++], mac, 6);
}

/* -- the TAP side -------------------------------------------------------------------- */
static void from_tap(struct dp *dp, const uint8_t *data, size_t len) {
    size_t skip = dp->vnet ? VNET : 0;
    if (len < skip + 14) return;
    const uint8_t *eth = data + skip;
    int targets[LINKS], ntargets = 0, python = -1;
    pthread_mutex_lock(&dp->lock);
    local_mac(dp, eth + 6);
    int owner = eth[0] & 1 ? -1 : mac_lookup(dp, eth);
    if (owner >= 0 && dp->links[owner].used) {
        targets[ntargets++] = owner;
    } else {
        for (int i = 0; i < LINKS; i++)
            if (dp->links[i].used) targets[ntargets++] = i;
        owner = -1;
    }
    for (int t = 0; t < ntargets; t++) {
        struct link *link = &dp->links[targets[t]];
        link->tx_packets++;
        link->tx_bytes += len - skip;
        if (!link->fast) {
            python = owner >= 0 ? owner : ALL;
            continue;
        }
        struct outgoing o;
        if (seal_frame(dp, link, targets[t], data, len, dp->out, &o) != 0) {
            link->drops++;
            continue;
        }
        pthread_mutex_unlock(&dp->lock);
        int failed = send_packets(dp, &o, dp->out);
        pthread_mutex_lock(&dp->lock);
        if (failed && dp->links[o.slot].used) dp->links[o.slot].drops++;
    }
    pthread_mutex_unlock(&dp->lock);
    if (python >= 0) {
        uint8_t s = (uint8_t)python;
        to_python(dp, 'T', &s, 1, data, len);
    }
}

/* -- the UDP side -------------------------------------------------------------------- */
static int find_cid(struct dp *dp, const uint8_t *cid) {
    for (int i = 0; i < dp->ncids; i++)
        if (!memcmp(dp->cids[i].cid, cid, CID)) return dp->cids[i].slot;
    return -1;
}

/* A packet number seen before, or too old to tell (RFC 9000 12.3)? Records it if not. */
static int replayed(struct link *link, int64_t pn) {
    if (pn > link->largest) {
        int64_t shift = link->largest < 0 ? WINDOW : pn - link->largest;
        if (shift >= WINDOW) {
            memset(link->window, 0, sizeof link->window);
        } else {
            int words = (int)(shift / 64), bits = (int)(shift % 64);
            for (int i = WINDOW / 64 - 1; i >= 0; i--) {
                uint64_t v = i - words >= 0 ? link->window[i - words] << bits : 0;
                if (bits && i - words - 1 >= 0) v |= link->window[i - words - 1] >> (64 - bits);
                link->window[i] = v;
            }
        }
        link->window[0] |= 1;
        link->largest = pn;
        return 0;
    }
    int64_t d = link->largest - pn;
    if (d >= WINDOW) return 1;
    uint64_t bit = 1ull << (d % 64);
    if (link->window[d / 64] & bit) return 1;
    link->window[d / 64] |= bit;
    return 0;
}

static void record(struct dp *dp, struct link *link, int slot, uint64_t pn, double now) {
    struct range *last = link->nranges ? &link->ranges[link->nranges - 1] : NULL;
    if (last && pn == last->stop) {
        last->stop++;
    } else {
        if (link->nranges == RANGES) {  /* as aioquic: the oldest range goes */
            memmove(link->ranges, link->ranges + 1, (RANGES - 1) * sizeof *link->ranges);
            link->nranges--;
        }
        link->ranges[link->nranges++] = (struct range){pn, pn + 1};
    }
    if ((int64_t)pn == link->largest) link->largest_time = now;
    link->last_rx = now;
    if (!link->notified) {
        uint8_t s = (uint8_t)slot;
        link->notified = 1;
        to_python(dp, 'A', &s, 1, NULL, 0);
    }
}

static int64_t decode_pn(int64_t largest, uint64_t truncated, int bytes) {
    int64_t expected = largest + 1, win = (int64_t)1 << (bytes * 8), hwin = win / 2;
    int64_t candidate = (expected & ~(win - 1)) | (int64_t)truncated;
    if (candidate <= expected - hwin && candidate < ((int64_t)1 << 62) - win) return candidate + win;
    if (candidate > expected + hwin && candidate >= win) return candidate - win;
    return candidate;
}

/* Open a short-header packet of a link into dp->frame: the DATAGRAM's contents (from the
 * fast path's kind byte on), or -1 when aioquic is to have it, -2 to drop it. */
static ssize_t open_packet(struct dp *dp, struct link *link, const uint8_t *data, size_t len,
                           int64_t *number) {
    uint8_t mask[16], header[1 + CID + 4], iv[12];
    int outl = 0;
    size_t offset = 1 + CID;
    if (len < offset + 4 + SAMPLE || !link->rx.aead) return -1;
    if (hp_mask(link->hp_rx, link->suite, data + offset + 4, mask) != 0) return -1;
    uint8_t first = data[0] ^ (mask[0] & 0x1F);
    int bytes = (first & 3) + 1;
    uint64_t truncated = 0;
    header[0] = first;
    memcpy(header + 1, data + 1, CID);
    for (int i = 0; i < bytes; i++) {
        header[offset + i] = data[offset + i] ^ mask[1 + i];
        truncated = truncated << 8 | header[offset + i];
    }
    int64_t pn = decode_pn(link->largest, truncated, bytes);
    int phase = (first >> 2) & 1;
    struct keys *keys = phase == link->rx.phase ? &link->rx
                      : link->rx_old.aead && phase == link->rx_old.phase ? &link->rx_old : NULL;
    size_t start = offset + bytes;
    if (!keys || len < start + TAG + 2) return -1;  /* the peer's next phase: aioquic */
    size_t body = len - start - TAG;
    nonce(keys, (uint64_t)pn, iv);
    EVP_CIPHER_CTX *ctx = keys->aead;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1
        || EVP_DecryptUpdate(ctx, NULL, &outl, header, (int)start) != 1
        || EVP_DecryptUpdate(ctx, dp->frame, &outl, data + start, (int)body) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG, (void *)(data + len - TAG)) != 1
        || EVP_DecryptFinal_ex(ctx, dp->frame + outl, &outl) != 1)
        return -1;  /* forged, or not ours: aioquic judges it */
    if (dp->frame[0] != 0x30 || (first & 0x18)) return -1;
    *number = pn;
    return (ssize_t)body;
}

static void to_tap(struct dp *dp, struct link *link, const uint8_t *message, size_t len) {
    if (len < VNET + 14) {
        link->drops++;
        return;
    }
    mac_learn(dp, message + VNET + 6, (int)(link - dp->links));
    link->rx_packets++;
    link->rx_bytes += len - VNET;
    if (!dp->vnet) {
        if (message[0] || message[1]) {  /* needs an offload this TAP does not have */
            link->drops++;
            return;
        }
        message += VNET;
        len -= VNET;
    }
    if (write(dp->tap, message, len) < 0) link->drops++;
}

/* A datagram for the endpoint's aioquic, with its source address ('U'). */
static void to_aioquic(struct dp *dp, const uint8_t *data, size_t len,
                       const struct sockaddr_storage *from, socklen_t fromlen) {
    uint8_t head[1 + sizeof(struct sockaddr_storage)];
    head[0] = (uint8_t)fromlen;
    memcpy(head + 1, from, fromlen);
    to_python(dp, 'U', head, 1 + fromlen, data, len);
}

static void from_udp(struct dp *dp, const uint8_t *data, size_t len,
                     const struct sockaddr_storage *from, socklen_t fromlen, double now) {
    if (!len) return;
    if (data[0] & 0x80 || len <= 1 + CID) {
        to_aioquic(dp, data, len, from, fromlen);
        return;
    }
    pthread_mutex_lock(&dp->lock);
    int slot = find_cid(dp, data + 1);
    struct link *link = slot >= 0 ? &dp->links[slot] : NULL;
    int64_t pn = 0;
    /* a connection still in its handshake, or no connection of ours: the endpoint's */
    ssize_t body = link && link->used ? open_packet(dp, link, data, len, &pn) : -1;
    if (body < 0) {
        pthread_mutex_unlock(&dp->lock);
        to_aioquic(dp, data, len, from, fromlen);
        return;
    }
    if (replayed(link, pn)) {
        pthread_mutex_unlock(&dp->lock);
        return;
    }
    record(dp, link, slot, (uint64_t)pn, now);
    uint8_t *payload = dp->frame;
    uint8_t kind = payload[1];
    if (kind == WHOLE_VNET) {
        to_tap(dp, link, payload + 2, (size_t)body - 2);
    } else if (kind == WHOLE) {
        memmove(payload + VNET, payload + 2, (size_t)body - 2);  /* room for a header */
        memset(payload, 0, VNET);
        to_tap(dp, link, payload, (size_t)body - 2 + VNET);
    } else if (kind == PIECE && body >= PIECE_HEADER) {
        int id = payload[2] << 8 | payload[3], index = payload[4], count = payload[5];
        size_t size = (size_t)body - PIECE_HEADER;
        if (index == 0) {
            link->message_len = 0;
            link->piece_id = id;
            link->piece_next = 0;
        } else if (id != link->piece_id || index != link->piece_next) {
            if (link->piece_next) link->drops++;  /* a piece went missing: the message is lost */
            link->piece_next = 0;
            pthread_mutex_unlock(&dp->lock);
            return;
        }
        if (link->message_len + size > BUFFER) {
            link->drops++;
            link->piece_next = 0;
        } else {
            memcpy(link->message + link->message_len, payload + PIECE_HEADER, size);
            link->message_len += size;
            link->piece_next = index + 1;
            if (link->piece_next == count) {
                link->piece_next = 0;
                to_tap(dp, link, link->message, link->message_len);
            }
        }
    } else {
        link->drops++;
    }
    pthread_mutex_unlock(&dp->lock);
}

/* -- the thread ---------------------------------------------------------------------- */
static void fail(struct dp *dp, const char *what) {
    char text[256];
    int n = snprintf(text, sizeof text, "%s: %s", what, strerror(errno));
    to_python(dp, 'E', text, (size_t)n, NULL, 0);
}

static void *run(void *arg) {
    struct dp *dp = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);  /* signals are the Python thread's */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = dp->tap;
    epoll_ctl(ep, EPOLL_CTL_ADD, dp->tap, &ev);
    ev.data.fd = dp->sock;
    epoll_ctl(ep, EPOLL_CTL_ADD, dp->sock, &ev);
    ev.data.fd = dp->stop_fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, dp->stop_fd, &ev);
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    for (;;) {
        struct epoll_event events[3];
        int n = epoll_wait(ep, events, 3, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(dp, "epoll_wait");
            break;
        }
        for (int e = 0; e < n; e++) {
            int fd = events[e].data.fd;
            if (fd == dp->stop_fd) {
                close(ep);
                return NULL;
            }
            for (int round = 0; round < BATCH; round++) {
                if (fd == dp->tap) {
                    ssize_t got = read(dp->tap, dp->in, sizeof dp->in);
                    if (got <= 0) {
                        if (got < 0 && (errno == EAGAIN || errno == EINTR)) break;
                        if (got == 0) errno = EPIPE;  /* no TAP ends; its stand-in in tests */
                        fail(dp, "read from the TAP");
                        close(ep);
                        return NULL;
                    }
                    from_tap(dp, dp->in, (size_t)got);
                    continue;
                }
                struct sockaddr_storage from;
                struct iovec iov = {dp->in, sizeof dp->in};
                struct msghdr msg = {0};
                msg.msg_name = &from;
                msg.msg_namelen = sizeof from;
                msg.msg_iov = &iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.buf;
                msg.msg_controllen = sizeof control.buf;
                ssize_t got = recvmsg(dp->sock, &msg, MSG_DONTWAIT);
                if (got < 0) {
                    if (errno == EAGAIN || errno == EINTR) break;
                    continue;  /* ICMP unreachable from an earlier send, and the like */
                }
                size_t segment = (size_t)got;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
                    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                        int size;
                        memcpy(&size, CMSG_DATA(c), sizeof size);
                        if (size > 0) segment = (size_t)size;
                    }
                double now = now_seconds();
                for (size_t off = 0; off < (size_t)got; off += segment) {
                    size_t len = off + segment <= (size_t)got ? segment : (size_t)got - off;
                    from_udp(dp, dp->in + off, len, &from, msg.msg_namelen, now);
                }
            }
        }
    }
    close(ep);
    return NULL;
}

/* -- the API (nova_quic.datapath) ---------------------------------------------------- */
struct dp *dp_open(int tap, int sock, int vnet, int max_frame, int piece) {
    struct dp *dp = calloc(1, sizeof *dp);
    int pair[2];
    if (!dp) return NULL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        free(dp);
        return NULL;
    }
    int size = 4 << 20;
    setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(pair[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    dp->channel = pair[0];
    dp->python_end = pair[1];
    dp->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    dp->tap = tap;
    dp->sock = sock;
    dp->vnet = vnet;
    dp->gso = 1;
    dp->max_frame = (size_t)max_frame;
    dp->piece = (size_t)piece;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&dp->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    return dp;
}

int dp_channel(struct dp *dp) { return dp->python_end; }

int dp_start(struct dp *dp) {
    if (dp->running) return 0;
    if (pthread_create(&dp->thread, NULL, run, dp) != 0) return -1;
    dp->running = 1;
    return 0;
}

void dp_stop(struct dp *dp) {
    if (!dp->running) return;
    uint64_t one = 1;
    if (write(dp->stop_fd, &one, sizeof one) < 0) return;
    pthread_join(dp->thread, NULL);
    dp->running = 0;
}

static void link_clear(struct link *link) {
    keys_free(&link->tx);
    keys_free(&link->rx);
    keys_free(&link->rx_old);
    if (link->hp_tx) EVP_CIPHER_CTX_free(link->hp_tx);
    if (link->hp_rx) EVP_CIPHER_CTX_free(link->hp_rx);
    free(link->message);
    memset(link, 0, sizeof *link);
}

void dp_close(struct dp *dp) {
    dp_stop(dp);
    for (int i = 0; i < LINKS; i++)
        if (dp->links[i].taken) link_clear(&dp->links[i]);
    close(dp->channel);
    close(dp->python_end);
    close(dp->stop_fd);
    pthread_mutex_destroy(&dp->lock);
    free(dp);
}

void dp_lock(struct dp *dp) { pthread_mutex_lock(&dp->lock); }
void dp_unlock(struct dp *dp) { pthread_mutex_unlock(&dp->lock); }

/* A link: its cipher suite, header protection keys, first 1-RTT keys each way, the next
 * packet number to send and the largest received. Returns its slot, or -1. */
int dp_link_add(struct dp *dp, int fast, int suite, const uint8_t *tx_hp, const uint8_t *rx_hp,
                int64_t next_pn, int64_t largest, uint64_t update_every) {
    if (!aead_cipher(suite)) return -1;
    pthread_mutex_lock(&dp->lock);
    int slot = -1;
    for (int i = 0; i < LINKS && slot < 0; i++)
        if (!dp->links[i].taken) slot = i;
    if (slot >= 0) {
        struct link *link = &dp->links[slot];
        link->taken = 1;
        link->suite = suite;
        link->hp_tx = hp_make(suite, tx_hp);
        link->hp_rx = hp_make(suite, rx_hp);
        link->message = malloc(BUFFER);
        if (!link->hp_tx || !link->hp_rx || !link->message) {
            link_clear(link);
            slot = -1;
        } else {
            link->fast = fast;
            link->next_pn = (uint64_t)next_pn;
            link->largest = largest;
            link->update_every = update_every;
        }
    }
    pthread_mutex_unlock(&dp->lock);
    return slot;
}

/* Keys of one direction (send: 1), after the handshake and after each key update. The
 * keys they replace for receiving still open late packets of their phase. */
int dp_link_keys(struct dp *dp, int slot, int send, int phase, const uint8_t *key,
                 const uint8_t *iv) {
    int result = -1;
    pthread_mutex_lock(&dp->lock);
    struct link *link = &dp->links[slot];
    if (slot >= 0 && slot < LINKS && link->taken) {
        if (send) {
            result = keys_make(&link->tx, link->suite, 1, key, iv, phase);
            link->sealed = 0;
            link->update_asked = 0;
        } else {
            struct keys fresh = {0};
            result = keys_make(&fresh, link->suite, 0, key, iv, phase);
            if (result == 0) {
                keys_free(&link->rx_old);
                link->rx_old = link->rx;
                link->rx = fresh;
            }
        }
    }
    pthread_mutex_unlock(&dp->lock);
    return result;
}

/* Where the link's packets go: the peer's connection id and address. Marks it usable. */
void dp_link_peer(struct dp *dp, int slot, const uint8_t *cid, const void *addr, int addrlen) {
    pthread_mutex_lock(&dp->lock);
    struct link *link = &dp->links[slot];
    memcpy(link->peer_cid, cid, CID);
    memcpy(&link->addr, addr, (size_t)addrlen);
    link->addrlen = (socklen_t)addrlen;
    link->used = link->tx.aead != NULL;
    pthread_mutex_unlock(&dp->lock);
}

/* One of our connection ids of the link: packets to it are the link's (add 0: retired). */
int dp_cid(struct dp *dp, int slot, const uint8_t *cid, int add) {
    int result = 0;
    pthread_mutex_lock(&dp->lock);
    for (int i = 0; i < dp->ncids; i++)
        if (!memcmp(dp->cids[i].cid, cid, CID)) {
            dp->cids[i] = dp->cids[--dp->ncids];
            break;
        }
    if (add) {
        if (dp->ncids < CIDS) {
            memcpy(dp->cids[dp->ncids].cid, cid, CID);
            dp->cids[dp->ncids++].slot = slot;
        } else {
            result = -1;
        }
    }
    pthread_mutex_unlock(&dp->lock);
    return result;
}

void dp_link_remove(struct dp *dp, int slot) {
    if (slot < 0 || slot >= LINKS) return;
    pthread_mutex_lock(&dp->lock);
    for (int i = 0; i < dp->ncids;)
        if (dp->cids[i].slot == slot) dp->cids[i] = dp->cids[--dp->ncids];
        else i++;
    macs_rebuild(dp, slot, NULL);
    link_clear(&dp->links[slot]);
    pthread_mutex_unlock(&dp->lock);
}

/* The next packet number of the link, and setting it: around aioquic's own packets,
 * with dp_lock held. */
int64_t dp_pn(struct dp *dp, int slot) { return (int64_t)dp->links[slot].next_pn; }
void dp_set_pn(struct dp *dp, int slot, int64_t pn) { dp->links[slot].next_pn = (uint64_t)pn; }

/* A packet number the endpoint opened itself (a packet this thread left to aioquic):
 * 0 if it is new (now recorded in the replay window), 1 if it came before. */
int dp_received(struct dp *dp, int slot, int64_t pn) {
    pthread_mutex_lock(&dp->lock);
    int seen = replayed(&dp->links[slot], pn);
    pthread_mutex_unlock(&dp->lock);
    return seen;
}

/* The packet numbers opened since the last call, as [start, stop) pairs into `out`
 * (at most `max` ranges); `info` gets the largest number, the time it came and the
 * time of the last packet (0 when none). Returns the number of ranges. */
int dp_drain(struct dp *dp, int slot, int64_t *out, int max, double *info) {
    pthread_mutex_lock(&dp->lock);
    struct link *link = &dp->links[slot];
    int n = link->nranges < max ? link->nranges : max;
    int skip = link->nranges - n;
    for (int i = 0; i < n; i++) {
        out[2 * i] = (int64_t)link->ranges[skip + i].start;
        out[2 * i + 1] = (int64_t)link->ranges[skip + i].stop;
    }
    info[0] = (double)link->largest;
    info[1] = link->largest_time;
    info[2] = link->last_rx;
    link->nranges = 0;
    link->notified = 0;
    link->last_rx = 0;
    pthread_mutex_unlock(&dp->lock);
    return n;
}

/* Counters: tx packets, tx bytes, rx packets, rx bytes, drops (of a slot; -1: the
 * messages to Python that did not fit in the channel, in out[4]). */
void dp_stats(struct dp *dp, int slot, uint64_t *out) {
    pthread_mutex_lock(&dp->lock);
    if (slot < 0) {
        memset(out, 0, 5 * sizeof *out);
        out[4] = dp->channel_drops;
    } else {
        struct link *link = &dp->links[slot];
        out[0] = link->tx_packets;
        out[1] = link->tx_bytes;
        out[2] = link->rx_packets;
        out[3] = link->rx_bytes;
        out[4] = link->drops;
    }
    pthread_mutex_unlock(&dp->lock);
}

/* The MAC `mac` lives behind the link in `slot` (a peer's announcement, or a frame
 * aioquic delivered). */
void dp_mac(struct dp *dp, const uint8_t *mac, int slot) {
    pthread_mutex_lock(&dp->lock);
    if (slot < 0) macs_rebuild(dp, -1, mac);
    else mac_learn(dp, mac, slot);
    pthread_mutex_unlock(&dp->lock);
}

/* MACs seen as sources on the TAP (instances on this host): 6 bytes each into `out`. */
int dp_local_macs(struct dp *dp, uint8_t *out, int max) {
    pthread_mutex_lock(&dp->lock);
    int n = dp->nlocal < max ? dp->nlocal : max;
    memcpy(out, dp->local_macs, (size_t)n * 6);
    pthread_mutex_unlock(&dp->lock);
    return n;
}
