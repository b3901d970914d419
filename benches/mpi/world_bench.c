/*
 * world_bench.c: the Open MPI side of `shmesh bench allreduce` and `shmesh bench
 * world-pingpong`.
 *
 * `shmesh bench` compiles this file with `mpicc -O2` into its private temporary directory and
 * runs it with `mpirun -n R --bind-to none` next to the same measurement over shmesh's World
 * (src/bench/world.rs, the hidden `shmesh __world-bench-rank`). Both sides follow the same
 * method, step for step; change one, change the other.
 *
 * Usage: world_bench allreduce SIZE WARMUP ITERS
 *        world_bench pingpong SIZE WARMUP ITERS        (exactly 2 ranks)
 *
 * allreduce: SIZE / 8 doubles (at least one), MPI_SUM, in place (MPI_IN_PLACE, as
 *   World::all_reduce works on the caller's buffer). Each iteration, on every rank: fill the
 *   buffer (element j of rank r in iteration i is (r + 1) + j % 251 + i % 7), MPI_Barrier, then
 *   time the one MPI_Allreduce with CLOCK_MONOTONIC, then check every element of the result.
 *   Neither the fill, the barrier nor the check is timed. The sample of an iteration is the
 *   largest time any rank measured for it: after the last iteration, an MPI_Reduce(MPI_MAX)
 *   of the per-iteration times of every rank to rank 0.
 *
 * pingpong: the full round trip, as every `shmesh bench` ping-pong: rank 0 starts the clock,
 *   writes message i (its 8-byte sequence number, then the byte (i ^ 0x5a) in every other
 *   byte), MPI_Send of SIZE bytes (MPI_BYTE) to rank 1, MPI_Recv of SIZE bytes back, checks
 *   its length and sequence number and reads one word of every 64-byte line, stops the
 *   clock. Rank 1
 *   receives, checks the same way, writes message i whole and sends it back. No barrier
 *   between round trips.
 *
 * The first WARMUP iterations run the same way and are not recorded. Then rank 0 prints one
 * line on stdout:
 *
 *     samples N T1 T2 ... TN
 *
 * the N = ITERS recorded times in ns, in order; the harness takes the percentiles with the
 * same code as for shmesh's rows. Any failed check or MPI error: a message on stderr and
 * MPI_Abort with exit status 2 (usage: 1).
 */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TAG 7

static int rank;
static int ranks;

static void fail(const char *what, long long iteration) {
    fprintf(stderr, "world_bench rank %d: %s (iteration %lld)\n", rank, what, iteration);
    MPI_Abort(MPI_COMM_WORLD, 2);
    exit(2);
}

static void check_mpi(int rc, const char *call, long long iteration) {
    if (rc != MPI_SUCCESS) {
        char text[MPI_MAX_ERROR_STRING];
        int len = 0;
        char what[MPI_MAX_ERROR_STRING + 64];
        MPI_Error_string(rc, text, &len);
        snprintf(what, sizeof what, "%s failed: %s", call, text);
        fail(what, iteration);
    }
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Message `seq`: its sequence number (little endian, what fits), then (seq ^ 0x5a) in every
 * other byte. */
static void fill(unsigned char *buf, size_t size, uint64_t seq) {
    size_t n = size < 8 ? size : 8;
    for (size_t k = 0; k < n; k++) {
        buf[k] = (unsigned char)(seq >> (8 * k));
    }
    if (size > n) {
        memset(buf + n, (unsigned char)(seq ^ 0x5a), size - n);
    }
}

static volatile uint64_t sink;

/* Checks the sequence number, then reads one 8-byte word of every 64-byte line. */
static void check(const unsigned char *buf, size_t size, uint64_t seq) {
    size_t n = size < 8 ? size : 8;
    for (size_t k = 0; k < n; k++) {
        if (buf[k] != (unsigned char)(seq >> (8 * k))) {
            fail("a message does not hold its sequence number", (long long)seq);
        }
    }
    uint64_t sum = 0;
    for (size_t off = 0; off < size; off += 64) {
        uint64_t word = 0;
        size_t len = size - off < 8 ? size - off : 8;
        memcpy(&word, buf + off, len);
        sum += word;
    }
    sink = sum;
}

/* Receives message `seq` of `size` bytes from `from` into `buf` and checks its length. */
static void receive(unsigned char *buf, size_t size, int from, long long seq) {
    MPI_Status status;
    int count = -1;
    check_mpi(MPI_Recv(buf, (int)size, MPI_BYTE, from, TAG, MPI_COMM_WORLD, &status), "MPI_Recv",
              seq);
    check_mpi(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count", seq);
    if (count != (int)size) {
        fail("a message has the wrong length", seq);
    }
}

static void pingpong(size_t size, long long warmup, long long iters, uint64_t *samples) {
    if (ranks != 2) {
        if (rank == 0) {
            fprintf(stderr, "world_bench: pingpong runs on exactly 2 ranks, not %d\n", ranks);
        }
        MPI_Abort(MPI_COMM_WORLD, 1);
        exit(1);
    }
    unsigned char *buf = malloc(size);
    if (buf == NULL) {
        fail("out of memory", -1);
    }
    for (long long i = 0; i < warmup + iters; i++) {
        uint64_t seq = (uint64_t)i;
        if (rank == 0) {
            uint64_t t0 = now_ns();
            fill(buf, size, seq);
            check_mpi(MPI_Send(buf, (int)size, MPI_BYTE, 1, TAG, MPI_COMM_WORLD), "MPI_Send", i);
            receive(buf, size, 1, i);
            check(buf, size, seq);
            uint64_t t1 = now_ns();
            if (i >= warmup) {
                samples[i - warmup] = t1 - t0;
            }
        } else {
            receive(buf, size, 0, i);
            check(buf, size, seq);
            fill(buf, size, seq);
            check_mpi(MPI_Send(buf, (int)size, MPI_BYTE, 0, TAG, MPI_COMM_WORLD), "MPI_Send", i);
        }
    }
    free(buf);
}

static void allreduce(size_t size, long long warmup, long long iters, uint64_t *samples) {
    size_t n = size / 8 ? size / 8 : 1;
    double *buf = malloc(n * sizeof(double));
    if (buf == NULL) {
        fail("out of memory", -1);
    }
    double base = (double)ranks * (ranks + 1) / 2.0;
    for (long long i = 0; i < warmup + iters; i++) {
        double shift = (double)(i % 7);
        for (size_t j = 0; j < n; j++) {
            buf[j] = (double)(rank + 1) + (double)(j % 251) + shift;
        }
        check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier", i);
        uint64_t t0 = now_ns();
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
                  "MPI_Allreduce", i);
        uint64_t t1 = now_ns();
        for (size_t j = 0; j < n; j++) {
            double want = base + (double)ranks * ((double)(j % 251) + shift);
            if (buf[j] != want) {
                char what[160];
                snprintf(what, sizeof what, "element %zu of the all-reduce is %.17g, expected %.17g",
                         j, buf[j], want);
                fail(what, i);
            }
        }
        if (i >= warmup) {
            samples[i - warmup] = t1 - t0;
        }
    }
    free(buf);
}

static long long number(const char *text, const char *what, long long min) {
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0' || v < min || v > (1LL << 40)) {
        if (rank == 0) {
            fprintf(stderr, "world_bench: %s must be a whole number >= %lld, not '%s'\n", what,
                    min, text);
        }
        MPI_Abort(MPI_COMM_WORLD, 1);
        exit(1);
    }
    return v;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (argc != 5 || (strcmp(argv[1], "allreduce") != 0 && strcmp(argv[1], "pingpong") != 0)) {
        if (rank == 0) {
            fprintf(stderr, "usage: world_bench allreduce|pingpong SIZE WARMUP ITERS\n");
        }
        MPI_Abort(MPI_COMM_WORLD, 1);
        return 1;
    }
    size_t size = (size_t)number(argv[2], "SIZE", 1);
    if (size > (size_t)1 << 30) {
        if (rank == 0) {
            fprintf(stderr, "world_bench: SIZE is at most 1 GiB\n");
        }
        MPI_Abort(MPI_COMM_WORLD, 1);
        return 1;
    }
    long long warmup = number(argv[3], "WARMUP", 0);
    long long iters = number(argv[4], "ITERS", 1);
    uint64_t *samples = calloc((size_t)iters, sizeof(uint64_t));
    uint64_t *slowest = calloc((size_t)iters, sizeof(uint64_t));
    if (samples == NULL || slowest == NULL) {
        fail("out of memory", -1);
    }
    if (strcmp(argv[1], "allreduce") == 0) {
        allreduce(size, warmup, iters, samples);
        /* The slowest rank of each iteration, gathered after the last one. */
        check_mpi(MPI_Reduce(samples, slowest, (int)iters, MPI_UINT64_T, MPI_MAX, 0,
                             MPI_COMM_WORLD),
                  "MPI_Reduce", -1);
    } else {
        pingpong(size, warmup, iters, samples);
        memcpy(slowest, samples, (size_t)iters * sizeof(uint64_t));
    }
    if (rank == 0) {
        printf("samples %lld", iters);
        for (long long i = 0; i < iters; i++) {
            printf(" %llu", (unsigned long long)slowest[i]);
        }
        printf("\n");
        fflush(stdout);
    }
    free(samples);
    free(slowest);
    MPI_Finalize();
    return 0;
}
