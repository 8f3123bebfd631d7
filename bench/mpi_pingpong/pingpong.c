/*
 * MPI ping-pong between ranks 0 and 1: latency of 8-byte messages and bandwidth of 1 MiB
 * messages. Each measurement is repeated TRIALS times and the median printed, because on a
 * small shared machine single runs wander by more than the 2% we want to resolve.
 *
 * Output (rank 0, one line each, machine-readable):
 *   latency_8B_us <median one-way latency in microseconds>
 *   bandwidth_1MiB_MBps <median bandwidth in 10^6 bytes per second>
 *   trials <n> <min..max of each, for judging the noise>
 *
 * Build: mpicc -O2 -o pingpong pingpong.c
 * Usage: mpirun -np 2 ./pingpong [trials]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMALL 8
#define LARGE (1 << 20)
#define SMALL_ITERS 20000
#define LARGE_ITERS 500
#define MAX_TRIALS 64

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Seconds for `iters` round trips of `size` bytes (rank 0 sends first). */
static double round_trips(char *buf, int size, int iters, int rank)
{
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            MPI_Send(buf, size, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, size, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, size, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, size, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - start;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs 2 ranks, got %d (no PMI?)\n", size);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int trials = argc > 1 ? atoi(argv[1]) : 7;
    if (trials < 1 || trials > MAX_TRIALS)
        trials = 7;
    char *buf = malloc(LARGE);
    memset(buf, rank, LARGE);
    double lat[MAX_TRIALS], bw[MAX_TRIALS];

    round_trips(buf, SMALL, SMALL_ITERS / 10, rank); /* warm up connections and caches */
    round_trips(buf, LARGE, LARGE_ITERS / 10, rank);
    for (int t = 0; t < trials; t++) {
        double s = round_trips(buf, SMALL, SMALL_ITERS, rank);
        lat[t] = s / (2.0 * SMALL_ITERS) * 1e6;
        double l = round_trips(buf, LARGE, LARGE_ITERS, rank);
        bw[t] = (double)LARGE * 2.0 * LARGE_ITERS / l / 1e6;
    }
    if (rank == 0) {
        qsort(lat, trials, sizeof(double), compare);
        qsort(bw, trials, sizeof(double), compare);
        printf("latency_8B_us %.3f\n", lat[trials / 2]);
        printf("bandwidth_1MiB_MBps %.1f\n", bw[trials / 2]);
        printf("trials %d latency %.3f..%.3f bandwidth %.1f..%.1f\n", trials, lat[0],
               lat[trials - 1], bw[0], bw[trials - 1]);
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
