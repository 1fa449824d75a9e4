#include "netpbm_shim.h"

#include <pam.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>

// The message of the last libnetpbm error; libnetpbm calls us instead of printing it.
static char last_error[512];

static void capture_error(const char *msg) {
    snprintf(last_error, sizeof last_error, "%s", msg);
    size_t n = strlen(last_error);
    while (n > 0 && (last_error[n - 1] == '\n' || last_error[n - 1] == '.')) last_error[--n] = 0;
}

static void ignore_message(const char *msg) { (void)msg; }

static void init_once(void) {
    static int done = 0;
    if (done) return;
    done = 1;
    pm_init("diffedit", 0);
    pm_setusererrormsgfn(capture_error);
    pm_setusermessagefn(ignore_message);
}

static void copy_error(char *err, size_t errlen) {
    snprintf(err, errlen, "%s", last_error[0] ? last_error : "libnetpbm failed");
}

// libnetpbm's PAM (P7) header parser copies header lines with overlapping strncpy arguments when
// a line is not a known keyword (found by our libFuzzer harness, AddressSanitizer
// strncpy-param-overlap). Check P7 headers first: every line up to ENDHDR must be empty, a
// comment, or a known keyword, and no longer than 255 bytes. The stream position is restored.
static int pam_header_is_sane(FILE *file, char *err, size_t errlen) {
    long start = ftell(file);
    if (start < 0) return 1;  // not seekable: leave it to libnetpbm
    int c;
    do { c = fgetc(file); } while (c == ' ' || c == '\n' || c == '\r' || c == '\t');
    int c2 = fgetc(file);
    int ok = 1;
    if (c == 'P' && c2 == '7') {
        static const char *keywords[] = {"WIDTH", "HEIGHT", "DEPTH", "MAXVAL", "TUPLTYPE", "ENDHDR"};
        char line[256];
        size_t n = 0;
        long lines = 0;
        while ((c = fgetc(file)) != EOF) {
            if (c != '\n') {
                if (n + 1 >= sizeof line) { ok = 0; break; }
                line[n++] = (char)c;
                continue;
            }
            line[n] = 0;
            n = 0;
            if (lines++ == 0) continue;  // the rest of the magic line
            if (lines > 10000) { ok = 0; break; }
            const char *p = line;
            while (*p == ' ' || *p == '\t' || *p == '\r') p++;
            if (*p == 0 || *p == '#') continue;
            int known = 0;
            for (size_t k = 0; k < sizeof keywords / sizeof keywords[0]; k++) {
                size_t len = strlen(keywords[k]);
                if (strncmp(p, keywords[k], len) == 0
                    && (p[len] == 0 || p[len] == ' ' || p[len] == '\t' || p[len] == '\r')) {
                    known = 1;
                    if (k == 5) goto done;
                }
            }
            if (!known) { ok = 0; break; }
        }
    }
done:
    fseek(file, start, SEEK_SET);
    if (!ok) snprintf(err, errlen, "malformed PAM header (a line that is not WIDTH, HEIGHT, DEPTH, MAXVAL, TUPLTYPE, ENDHDR or a comment, or one over 255 bytes)");
    return ok;
}

int diffedit_image_read_header(FILE *file, int is_first, diffedit_image_info *info,
                               char *err, size_t errlen) {
    init_once();
    jmp_buf jb;
    jmp_buf *saved;
    last_error[0] = 0;
    if (setjmp(jb) != 0) {
        pm_setjmpbuf(saved);
        copy_error(err, errlen);
        return -1;
    }
    pm_setjmpbufsave(&jb, &saved);
    if (!is_first) {
        int eof = 0;
        pnm_nextimage(file, &eof);
        if (eof) { pm_setjmpbuf(saved); return 1; }
    }
    if (!pam_header_is_sane(file, err, errlen)) {
        pm_setjmpbuf(saved);
        return -1;
    }
    struct pam pam;
    memset(&pam, 0, sizeof pam);
    pnm_readpaminit(file, &pam, PAM_STRUCT_SIZE(tuple_type));
    pm_setjmpbuf(saved);
    info->width = pam.width;
    info->height = pam.height;
    info->depth = (int)pam.depth;
    info->maxval = pam.maxval;
    info->format = pam.format;
    snprintf(info->tuple_type, sizeof info->tuple_type, "%s", pam.tuple_type);
    return 0;
}

// Reads the raster into floats (each sample / maxval) or into integer levels, whichever is given.
static int read_raster(FILE *file, const diffedit_image_info *info, float *out, unsigned short *levels,
                       char *err, size_t errlen) {
    init_once();
    struct pam pam;
    memset(&pam, 0, sizeof pam);
    pam.size = PAM_STRUCT_SIZE(tuple_type);
    pam.len = PAM_STRUCT_SIZE(tuple_type);
    pam.file = file;
    pam.format = info->format;
    pam.plainformat = 0;
    pam.width = info->width;
    pam.height = info->height;
    pam.depth = (unsigned int)info->depth;
    pam.maxval = info->maxval;
    pam.bytes_per_sample = pam.maxval < 256 ? 1 : 2;
    snprintf(pam.tuple_type, sizeof pam.tuple_type, "%s", info->tuple_type);

    jmp_buf jb;
    jmp_buf *saved;
    tuple *volatile row = NULL;
    last_error[0] = 0;
    if (setjmp(jb) != 0) {
        pm_setjmpbuf(saved);
        if (row) pnm_freepamrow(row);
        copy_error(err, errlen);
        return -1;
    }
    pm_setjmpbufsave(&jb, &saved);
    row = pnm_allocpamrow(&pam);
    // Divide (not multiply by a reciprocal): numpy's u8 / 255.0 in float32 is what diffusers does.
    const float maxval = (float)pam.maxval;
    const size_t depth = pam.depth;
    for (int y = 0; y < pam.height; y++) {
        pnm_readpamrow(&pam, row);
        size_t base = (size_t)y * (size_t)pam.width * depth;
        if (out) {
            for (int x = 0; x < pam.width; x++)
                for (size_t c = 0; c < depth; c++)
                    out[base + (size_t)x * depth + c] = (float)row[x][c] / maxval;
        } else {
            for (int x = 0; x < pam.width; x++)
                for (size_t c = 0; c < depth; c++)
                    levels[base + (size_t)x * depth + c] = (unsigned short)row[x][c];
        }
    }
    pnm_freepamrow(row);
    pm_setjmpbuf(saved);
    return 0;
}

int diffedit_image_read_raster(FILE *file, const diffedit_image_info *info, float *out,
                               char *err, size_t errlen) {
    return read_raster(file, info, out, NULL, err, errlen);
}

int diffedit_image_read_levels(FILE *file, const diffedit_image_info *info, unsigned short *out,
                               char *err, size_t errlen) {
    if (info->maxval > 65535) {
        snprintf(err, errlen, "maxval %lu is past 65535, the largest netpbm allows", info->maxval);
        return -1;
    }
    return read_raster(file, info, NULL, out, err, errlen);
}

int diffedit_image_write(FILE *file, int width, int height, int depth, unsigned long maxval,
                         const unsigned short *samples, char *err, size_t errlen) {
    return diffedit_image_write_format(file, width, height, depth, maxval, depth == 1 ? RPGM_FORMAT : RPPM_FORMAT,
                                       depth == 1 ? "GRAYSCALE" : "RGB", samples, err, errlen);
}

int diffedit_image_write_format(FILE *file, int width, int height, int depth, unsigned long maxval,
                                int format, const char *tuple_type, const unsigned short *samples,
                                char *err, size_t errlen) {
    init_once();
    struct pam pam;
    memset(&pam, 0, sizeof pam);
    pam.size = PAM_STRUCT_SIZE(tuple_type);
    pam.len = PAM_STRUCT_SIZE(tuple_type);
    pam.file = file;
    pam.format = format;
    pam.plainformat = 0;  // the raw variant of the format: plain input is written raw
    pam.width = width;
    pam.height = height;
    pam.depth = (unsigned int)depth;
    pam.maxval = maxval;
    snprintf(pam.tuple_type, sizeof pam.tuple_type, "%s", tuple_type);

    jmp_buf jb;
    jmp_buf *saved;
    tuple *volatile row = NULL;
    last_error[0] = 0;
    if (setjmp(jb) != 0) {
        pm_setjmpbuf(saved);
        if (row) pnm_freepamrow(row);
        copy_error(err, errlen);
        return -1;
    }
    pm_setjmpbufsave(&jb, &saved);
    pnm_writepaminit(&pam);
    row = pnm_allocpamrow(&pam);
    for (int y = 0; y < height; y++) {
        const unsigned short *src = samples + (size_t)y * (size_t)width * (size_t)depth;
        for (int x = 0; x < width; x++)
            for (int c = 0; c < depth; c++)
                row[x][c] = src[(size_t)x * (size_t)depth + (size_t)c];
        pnm_writepamrow(&pam, row);
    }
    pnm_freepamrow(row);
    pm_setjmpbuf(saved);
    if (fflush(file) != 0) {
        snprintf(err, errlen, "write error: %s", strerror(ferror(file) ? errno : EIO));
        return -1;
    }
    return 0;
}
