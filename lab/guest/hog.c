/*
 * hog: a guest-side memory hog in the course's shape.
 *
 * It touches one 4 KiB page every PAGE_US microseconds (100 us = 40 MiB/s,
 * 500 us = 8 MiB/s). It paces itself against the monotonic clock rather than
 * sleeping per page, because a software-emulated guest cannot sleep 100 us
 * precisely: it touches whatever pages are due, then sleeps about 1 ms.
 *
 *   hog grow [PAGE_US]                      mode B: grow until killed
 *   hog hold SIZE_MIB [HOLD_S] [PAGE_US]    mode A: grow to SIZE_MIB and hold;
 *                                           with HOLD_S > 0, free and exit after
 *                                           holding that long (HOLD_S = 0: forever)
 *   hog cycle SIZE_MIB [PAGE_US]            grow to SIZE_MIB, then write every page
 *                                           again, round after round, until killed:
 *                                           a working set the guest must keep resident
 *                                           (with a swap device larger than memory, it
 *                                           swaps)
 *   hog mapread PATH SIZE_MIB               mmap the first SIZE_MIB of PATH read-only
 *                                           and read a byte of every page, round after
 *                                           round, until killed (page-cache re-reads
 *                                           through page faults, not read())
 *
 * Progress lines ("hog: 123 MiB") go to stdout every 16 MiB and at each state
 * change ("hog: round N" at most once a second while cycling or reading), so
 * the host can follow it over the serial console.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>

#define PAGE_KIB 4
#define CHUNK_MIB 16
#define MAX_CHUNKS 4096 /* 64 GiB: more than any guest we boot */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void say(const char *fmt, long v)
{
    printf(fmt, v);
    fflush(stdout);
}

/* Read one byte of every page of the mapping, round after round; "hog: round N" every round. */
static int mapread(const char *path, long size_mib)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror("hog: open");
        return 1;
    }
    size_t len = (size_t)size_mib << 20;
    volatile unsigned char *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        perror("hog: mmap");
        return 1;
    }
    say("hog: start %ld\n", (long)getpid());
    unsigned long sum = 0;
    double said = 0;
    for (long round = 1;; round++) {
        for (size_t off = 0; off < len; off += PAGE_KIB * 1024) sum += map[off];
        if (now_s() - said >= 1.0) {
            said = now_s();
            say("hog: round %ld\n", round + (long)(sum & 0));
        }
    }
}

int main(int argc, char **argv)
{
    int grow_forever, cycle = 0;
    long size_mib = 0, hold_s = 0, page_us = 200;

    if (argc >= 2 && strcmp(argv[1], "grow") == 0) {
        grow_forever = 1;
        if (argc >= 3) page_us = atol(argv[2]);
    } else if (argc >= 3 && strcmp(argv[1], "cycle") == 0) {
        grow_forever = 0;
        cycle = 1;
        size_mib = atol(argv[2]);
        if (argc >= 4) page_us = atol(argv[3]);
    } else if (argc >= 4 && strcmp(argv[1], "mapread") == 0) {
        FILE *adj = fopen("/proc/self/oom_score_adj", "w");
        if (adj) {
            fputs("0", adj);
            fclose(adj);
        }
        return mapread(argv[2], atol(argv[3]));
    } else if (argc >= 3 && strcmp(argv[1], "hold") == 0) {
        grow_forever = 0;
        size_mib = atol(argv[2]);
        if (argc >= 4) hold_s = atol(argv[3]);
        if (argc >= 5) page_us = atol(argv[4]);
    } else {
        fprintf(stderr, "usage: hog grow [PAGE_US] | hog hold SIZE_MIB [HOLD_S] [PAGE_US]"
                        " | hog cycle SIZE_MIB [PAGE_US] | hog mapread PATH SIZE_MIB\n");
        return 2;
    }
    if (page_us < 1) page_us = 1;

    static char *chunks[MAX_CHUNKS];
    const long pages_per_chunk = CHUNK_MIB * 1024 / PAGE_KIB;
    const long pages_per_mib = 1024 / PAGE_KIB;
    long target_pages = grow_forever ? -1 : size_mib * pages_per_mib;
    long touched = 0, last_report_mib = -1;
    double t0 = now_s();

    /* The guest's shell runs with oom_score_adj -1000 so it survives; the hog must not inherit that. */
    FILE *adj = fopen("/proc/self/oom_score_adj", "w");
    if (adj) {
        fputs("0", adj);
        fclose(adj);
    }
    say("hog: start %ld\n", (long)getpid());
    while (target_pages < 0 || touched < target_pages) {
        long due = (long)((now_s() - t0) * 1e6 / page_us) + 1;
        if (target_pages >= 0 && due > target_pages) due = target_pages;
        while (touched < due) {
            long c = touched / pages_per_chunk;
            if (c >= MAX_CHUNKS) {
                say("hog: out of address space at %ld MiB\n", touched / pages_per_mib);
                return 1;
            }
            if (!chunks[c]) {
                /* MAP_NORESERVE: the guest's OOM killer, not mmap, decides when we stop. */
                chunks[c] = mmap(NULL, (size_t)CHUNK_MIB << 20, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
                if (chunks[c] == MAP_FAILED) {
                    say("hog: mmap failed at %ld MiB\n", touched / pages_per_mib);
                    return 1;
                }
            }
            /* Write a non-zero byte so the page is really backed (no zero-page sharing). */
            chunks[c][(touched % pages_per_chunk) * PAGE_KIB * 1024] = (char)(touched | 1);
            touched++;
            long mib = touched / pages_per_mib;
            if (mib > 0 && mib % CHUNK_MIB == 0 && mib != last_report_mib) {
                last_report_mib = mib;
                say("hog: %ld MiB\n", mib);
            }
        }
        usleep(1000);
    }
    say("hog: holding %ld MiB\n", touched / pages_per_mib);
    double said = 0;
    for (long round = 1; cycle; round++) {
        for (long i = 0; i < touched; i++)
            chunks[i / pages_per_chunk][(i % pages_per_chunk) * PAGE_KIB * 1024] = (char)(round | 1);
        if (now_s() - said >= 1.0) {
            said = now_s();
            say("hog: round %ld\n", round);
        }
    }
    if (hold_s == 0) {
        for (;;) pause();
    }
    sleep((unsigned)hold_s);
    for (long c = 0; c < MAX_CHUNKS && chunks[c]; c++) munmap(chunks[c], (size_t)CHUNK_MIB << 20);
    say("hog: freed %ld MiB\n", touched / pages_per_mib);
    say("hog: exit %ld\n", 0);
    return 0;
}
