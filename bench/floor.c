/* The polling floor: what a bare libmodbus loop costs to read the same registers linetap
 * reads, with no decoding, buffer or delivery. One thread, N connections to the simulator,
 * each read every POLL_MS (0: back to back), until SECONDS have passed. Prints one JSON line
 * with reads, values read and the CPU seconds it used.
 *
 *   cc -O2 -o floor bench/floor.c $(pkg-config --cflags --libs libmodbus)
 *   ./floor PORT1,PORT2,... POLL_MS SECONDS REGISTERS
 */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double user_s, system_s;

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    user_s = r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6;
    system_s = r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
    return user_s + system_s;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: floor PORT1,PORT2,... POLL_MS SECONDS REGISTERS\n");
        return 2;
    }
    int n = 1;
    for (char *p = argv[1]; *p; p++) n += *p == ',';
    double poll = atof(argv[2]) / 1000.0, seconds = atof(argv[3]);
    int regs = atoi(argv[4]);
    modbus_t **ctx = calloc(n, sizeof *ctx);
    double *next = calloc(n, sizeof *next);
    char *ports = strdup(argv[1]);
    int i = 0;
    for (char *tok = strtok(ports, ","); tok; tok = strtok(NULL, ","), i++) {
        ctx[i] = modbus_new_tcp("127.0.0.1", atoi(tok));
        modbus_set_slave(ctx[i], 1);
        modbus_set_response_timeout(ctx[i], 1, 0);
        if (modbus_connect(ctx[i]) == -1) {
            fprintf(stderr, "connect %s: %s\n", tok, modbus_strerror(errno));
            return 1;
        }
    }
    uint16_t buf[125];
    long reads = 0, values = 0, errors = 0;
    double c0 = cpu(), t0 = now(), end = t0 + seconds;
    for (i = 0; i < n; i++) next[i] = t0;
    for (;;) {
        double t = now();
        if (t >= end) break;
        /* The earliest deadline; sleep until it. */
        int k = 0;
        for (i = 1; i < n; i++)
            if (next[i] < next[k]) k = i;
        if (next[k] > t) {
            double d = next[k] - t;
            struct timespec s = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
            nanosleep(&s, NULL);
        }
        /* Read the registers in requests of at most 125, as linetap's planner merges them. */
        int ok = 1;
        for (int start = 0; start < regs; start += 125) {
            int count = regs - start < 125 ? regs - start : 125;
            if (modbus_read_registers(ctx[k], start, count, buf) == count) {
                reads++;
            } else {
                errors++;
                ok = 0;
            }
        }
        if (ok) values += regs / 2; /* f32 values: two registers each */
        next[k] += poll;
        if (poll > 0 && next[k] < now()) next[k] = now(); /* behind: no burst */
        if (poll == 0) next[k] = now();
    }
    double u0 = user_s, s0 = system_s, c1 = cpu(), t1 = now();
    printf("{\"reads\": %ld, \"values\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"cpu_seconds\": %.4f, "
           "\"user_s\": %.3f, \"system_s\": %.3f}\n",
           reads, values, errors, t1 - t0, c1 - c0, user_s - u0, system_s - s0);
    return 0;
}
