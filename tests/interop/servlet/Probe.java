// A servlet that names itself: deployed twice by test_servlet_differential.py (as `protected` on
// /api/* and as `open` on /), it answers which mapping Tomcat chose for a request, on which
// connector port it arrived, and the method and Authorization it received. Every request is also
// appended to the file named by the `probe.log` system property (one line per request, starting
// with the X-Probe-Case header), so a request that reached a servlet is seen even when the client
// never got the answer.
package probe;

import jakarta.servlet.ServletException;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;

public class Probe extends HttpServlet {
    private static final Object LOCK = new Object();

    private static String nz(String s) {
        return s == null ? "" : s.replace('\r', ' ').replace('\n', ' ');
    }

    @Override
    protected void service(HttpServletRequest req, HttpServletResponse resp)
            throws ServletException, IOException {
        String name = getInitParameter("name");
        String caseId = nz(req.getHeader("X-Probe-Case"));
        String body = "SERVLETPROBE\n"
                + "servlet=" + name + "\n"
                + "port=" + req.getLocalPort() + "\n"
                + "method=" + nz(req.getMethod()) + "\n"
                + "auth=" + nz(req.getHeader("Authorization")) + "\n"
                + "request_uri=" + nz(req.getRequestURI()) + "\n"
                + "servlet_path=" + nz(req.getServletPath()) + "\n"
                + "path_info=" + nz(req.getPathInfo()) + "\n"
                + "case=" + caseId + "\n";
        String log = System.getProperty("probe.log");
        if (log != null) {
            String line = (caseId.isEmpty() ? "-" : caseId) + " servlet=" + name + " port="
                    + req.getLocalPort() + " method=" + nz(req.getMethod()) + " auth="
                    + nz(req.getHeader("Authorization")) + " uri=" + nz(req.getRequestURI()) + "\n";
            synchronized (LOCK) {
                try (OutputStream out = new FileOutputStream(log, true)) {
                    out.write(line.getBytes(StandardCharsets.UTF_8));
                }
            }
        }
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        resp.setStatus(200);
        resp.setContentType("text/plain;charset=UTF-8");
        resp.setContentLength(bytes.length);
        resp.setHeader("X-Servlet-Probe", name);
        resp.getOutputStream().write(bytes);
    }
}
