package main

// The "browser" of the sign-in (consent page, callback), played against the WeChat simulator so
// that the example runs anywhere the dev mode or the test harness runs. A real product only
// redirects; none of this is in it.

import (
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// wechatBrowserUA is WeChat's in-app browser: an official account's authorize page opens
// nowhere else, so the browser played here is inside WeChat.
const wechatBrowserUA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) " +
	"Mobile/15E148 MicroMessenger/8.0.50(0x1800323b) NetType/WIFI Language/zh_CN"

// browser makes requests as the in-app browser does, redirects not followed.
var browser = &http.Client{
	Timeout:       callTimeout,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

type page struct {
	status    int
	location  string
	setCookie string
	body      string
}

// fetchPage is one GET (or a POST of form), with cookie when given.
func fetchPage(target string, form url.Values, cookie string) (*page, error) {
	method, body := http.MethodGet, io.Reader(nil)
	if form != nil {
		method, body = http.MethodPost, strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", wechatBrowserUA)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := browser.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &page{resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Set-Cookie"), string(text)}, nil
}

var (
	consentForm = regexp.MustCompile(`(?s)<form method="post" action="([^"]+)">(.*?)</form>`)
	hiddenField = regexp.MustCompile(`type="hidden" name="([^"]+)" value="([^"]*)"`)
)

// consent is the user on WeChat's consent page: picks user, presses Allow. Returns the callback
// URL.
func consent(authorizeURL, user string) (string, error) {
	pageURL, _, _ := strings.Cut(authorizeURL, "#") // `#wechat_redirect` is for WeChat's browser
	p, err := fetchPage(pageURL, nil, "")
	if err != nil {
		return "", err
	}
	if p.status != http.StatusOK {
		return "", fmt.Errorf("consent page: HTTP %d", p.status)
	}
	form := consentForm.FindStringSubmatch(p.body)
	if form == nil {
		return "", errors.New("consent page: no form")
	}
	fields := url.Values{"user": {user}}
	for _, field := range hiddenField.FindAllStringSubmatch(form[2], -1) {
		fields.Set(field[1], html.UnescapeString(field[2]))
	}
	base, err := url.Parse(pageURL)
	if err != nil {
		return "", err
	}
	action, err := base.Parse(html.UnescapeString(form[1]))
	if err != nil {
		return "", err
	}
	allowed, err := fetchPage(action.String(), fields, "")
	if err != nil {
		return "", err
	}
	if allowed.status != http.StatusFound {
		return "", fmt.Errorf("consent: HTTP %d, expected a redirect", allowed.status)
	}
	return allowed.location, nil
}

// onRelay requests wxauth's callback path (on its callback domain; relayBase reaches it here)
// with rawURL's query, with cookie when given, and expects a redirect.
func onRelay(rawURL, relayBase, cookie, what string) (*page, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	answer, err := fetchPage(relayBase+"/wechat/callback?"+u.RawQuery, nil, cookie)
	if err != nil {
		return nil, err
	}
	if answer.status != http.StatusFound {
		return nil, fmt.Errorf("%s: HTTP %d", what, answer.status)
	}
	return answer, nil
}

// start follows the product's redirect to the flow's start URL: wxauth binds the flow to this
// browser with a cookie and redirects to WeChat. Returns WeChat's authorize URL and the cookie
// the browser keeps.
func start(startURL, relayBase string) (toWechat, cookie string, err error) {
	answer, err := onRelay(startURL, relayBase, "", "start URL")
	if err != nil {
		return "", "", err
	}
	cookie, _, _ = strings.Cut(answer.setCookie, ";")
	return answer.location, cookie, nil
}

// relay takes the callback to wxauth's relay with the browser's cookie; the relay redirects to
// the product's return URL.
func relay(callbackURL, relayBase, cookie string) (string, error) {
	answer, err := onRelay(callbackURL, relayBase, cookie, "relay")
	if err != nil {
		return "", err
	}
	return answer.location, nil
}
