# Sourced by NGINX's configure after `config`: adds the cargo rule to objs/Makefile.

ngx_sessions_make_cargo_rule

if [ "$ngx_sessions_link" = DYNAMIC ]; then
    # auto/make attaches addon dependencies to C objects; this module has none, so the
    # .so is made to depend on the library directly.
    echo "$NGX_OBJS/ngx_http_sessions_module$ngx_modext: $ngx_sessions_lib" >> $NGX_MAKEFILE
fi
